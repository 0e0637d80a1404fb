//! The authoritative DNS server: hickory-server's UDP and TCP listeners (wire codec,
//! framing, truncation) with our request handler, which answers from the record store.
//!
//! Answers, for a query of class IN (or ANY):
//! - a name in no served zone: REFUSED (we are not a resolver);
//! - records of the type at the name: NOERROR, authoritative, each with its own TTL;
//! - the name exists (the zone apex, a name with other types, an empty non-terminal) but
//!   has no record of the type: NOERROR/NODATA with the zone's SOA;
//! - otherwise NXDOMAIN with the zone's SOA (negative caching, RFC 2308).
//!
//! The SOA is synthesised per zone (we have no zone configuration: zones come from agents'
//! updates): primary name server = our host name, serial = the store's change counter,
//! negative TTL [`NEGATIVE_TTL`]. DNS UPDATE is refused: agents write over XMPP only.
//!
//! Handling never blocks: a query takes the store's read lock for an in-memory lookup and
//! releases it before the response is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, error, info, warn};

use crate::records::{Lookup, RecordData};
use crate::server::Shared;

/// TTL of the synthesised SOA and its `minimum` (how long resolvers cache NXDOMAIN and
/// NODATA). Short, because names appear as soon as a VM's interface is registered.
pub const NEGATIVE_TTL: u32 = 60;
/// SOA timers; we have no secondaries, these only have to be sane.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400;
/// A TCP client that sends nothing for this long is disconnected (hickory's per-connection
/// idle bound: the number of TCP connections is otherwise only bounded by descriptors).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection before the handler waits for the client to read.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The EDNS version we speak (RFC 6891).
const EDNS_VERSION: u8 = 0;
const TYPE_SOA: u16 = 6;
const TYPE_ANY: u16 = 255;

/// Serves DNS on `udp` and `tcp` until the node shuts down.
pub async fn serve(shared: Arc<Shared>, udp: UdpSocket, tcp: TcpListener) {
    if let (Ok(u), Ok(t)) = (udp.local_addr(), tcp.local_addr()) {
        info!(udp = %u, tcp = %t, "DNS server listening");
    }
    let shutdown = shared.shutdown.clone();
    let mut server = Server::new(Handler { shared });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    tokio::select! {
        () = shutdown.cancelled() => {}
        r = server.block_until_done() => {
            if let Err(e) = r {
                error!(error = %e, "DNS server stopped");
            }
            return;
        }
    }
    if let Err(e) = server.shutdown_gracefully().await {
        warn!(error = %e, "DNS server shutdown");
    }
}

/// The request handler: answers from the shared record store.
#[derive(Debug)]
pub struct Handler {
    shared: Arc<Shared>,
}

/// A response before it is encoded.
#[derive(Debug)]
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    soa: Vec<Record>,
}

impl Reply {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            soa: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let m = &self.shared.metrics;
        let proto_counter = match request.protocol() {
            Protocol::Udp => &m.dns_udp,
            _ => &m.dns_tcp,
        };
        proto_counter.fetch_add(1, Ordering::Relaxed);
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(EDNS_VERSION);
            e
        });
        let reply = self.reply(request);
        count(m, &reply).fetch_add(1, Ordering::Relaxed);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = reply.authoritative;
        metadata.response_code = reply.code;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &resp_edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            std::iter::empty(),
            reply.soa.iter(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, src = %request.src(), "cannot send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The counter a reply is accounted under.
fn count<'a>(m: &'a crate::server::Metrics, r: &Reply) -> &'a AtomicU64 {
    match r.code {
        ResponseCode::NoError if r.answers.is_empty() => &m.dns_nodata,
        ResponseCode::NoError => &m.dns_answered,
        ResponseCode::NXDomain => &m.dns_nxdomain,
        ResponseCode::Refused => &m.dns_refused,
        _ => &m.dns_errors,
    }
}

impl Handler {
    /// Computes the reply without awaiting anything (the store lock is never held across
    /// an await).
    fn reply(&self, request: &Request) -> Reply {
        if request
            .edns
            .as_ref()
            .is_some_and(|e| e.version() > EDNS_VERSION)
        {
            return Reply::error(ResponseCode::BADVERS);
        }
        if request.metadata.message_type != MessageType::Query {
            return Reply::error(ResponseCode::FormErr);
        }
        match request.metadata.op_code {
            OpCode::Query => {}
            // Records are written by agents over XMPP only.
            OpCode::Update => return Reply::error(ResponseCode::Refused),
            _ => return Reply::error(ResponseCode::NotImp),
        }
        let Ok(info) = request.request_info() else {
            return Reply::error(ResponseCode::FormErr);
        };
        let query = info.query;
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Reply::error(ResponseCode::Refused);
        }
        let ascii = query.name().to_ascii();
        let qname = ascii
            .strip_suffix('.')
            .unwrap_or(&ascii)
            .to_ascii_lowercase();
        if qname.is_empty() {
            return Reply::error(ResponseCode::Refused);
        }
        let qtype = u16::from(query.query_type());
        // The owner name as asked, case preserved (resolvers using 0x20 case randomisation
        // check it).
        let owner = query.original().name().clone();
        let store = self.shared.records();
        let serial = store.serial();
        let lookup = store.lookup(&qname, qtype);
        drop(store);
        debug!(name = %qname, qtype, ?lookup, src = %info.src, "DNS query");
        let soa = |zone: &str| self.soa(zone, serial).into_iter().collect::<Vec<_>>();
        match lookup {
            Lookup::Refused => Reply::error(ResponseCode::Refused),
            Lookup::NxDomain { zone } => Reply {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: Vec::new(),
                soa: soa(&zone),
            },
            Lookup::NoData { zone } => {
                if qname == zone && qtype == TYPE_SOA {
                    return Reply {
                        code: ResponseCode::NoError,
                        authoritative: true,
                        answers: soa(&zone),
                        soa: Vec::new(),
                    };
                }
                Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: Vec::new(),
                    soa: soa(&zone),
                }
            }
            Lookup::Records { zone, records } => {
                let mut answers: Vec<Record> = records
                    .into_iter()
                    .filter_map(|(data, ttl)| to_rdata(&data).map(|r| (r, ttl)))
                    .map(|(rdata, ttl)| Record::from_rdata(owner.clone(), ttl, rdata))
                    .collect();
                if qname == zone && qtype == TYPE_ANY {
                    answers.extend(soa(&zone));
                }
                Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers,
                    soa: Vec::new(),
                }
            }
        }
    }

    /// The synthesised SOA of a zone.
    fn soa(&self, zone: &str, serial: u32) -> Option<Record> {
        let zone_name = fqdn(zone)?;
        let mname = fqdn(&self.shared.settings.hostname).unwrap_or_else(|| zone_name.clone());
        let rname = fqdn(&format!("hostmaster.{zone}")).unwrap_or_else(|| zone_name.clone());
        let soa = SOA::new(
            mname,
            rname,
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            NEGATIVE_TTL,
        );
        let mut r = Record::from_rdata(zone_name, NEGATIVE_TTL, RData::SOA(soa));
        r.dns_class = DNSClass::IN;
        Some(r)
    }
}

/// A normalised name as an absolute hickory name.
fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
}

fn to_rdata(data: &RecordData) -> Option<RData> {
    Some(match data {
        RecordData::A(a) => RData::A(A(*a)),
        RecordData::Aaaa(a) => RData::AAAA(AAAA(*a)),
        RecordData::Ptr(n) => RData::PTR(PTR(fqdn(n)?)),
    })
}
