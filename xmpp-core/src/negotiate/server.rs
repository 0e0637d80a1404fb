//! The responder (server) side: control node and DNS node.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::{Action, Negotiated};
use crate::error::Error;
use crate::jid::Jid;
use crate::sasl::{self, SaslCondition, SaslFailure, SaslNonza};
use crate::stanza::bind::{BindRequest, bind_result};
use crate::stanza::{Iq, StanzaCondition, StanzaError, ns};
use crate::stream::{CONTRAIL_STREAM_ID, Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::tls::PeerIdentity;
use crate::xml::{Element, Event, Limits, Reader, Style, XmlWriter, is_filler};

/// SASL attempts a client gets before the stream is closed: RFC 6120 §6.4.5 wants a
/// reasonable number of retries, at least 2 and at most 5; three attempts are two retries.
/// A certificate does not change between attempts, so more would only let a client spin.
const MAX_SASL_ATTEMPTS: u8 = 3;

/// How a stream in the RFC 6120 dialect is served. The Contrail dialect is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RfcProfile {
    /// The stream layer only: features after every (re)start (STARTTLS when required, then
    /// an empty set), no SASL and no binding. What [`crate::io::accept`] runs; for tools and
    /// tests of the framing, and peers that authenticate by TLS alone.
    #[default]
    StreamOnly,
    /// The RFC 6120 client profile the control and DNS nodes serve:
    /// * TLS required (`xmpp_auth_enable`): STARTTLS, then SASL EXTERNAL with the client
    ///   certificate as the only mechanism (XEP-0178; identity rule in
    ///   [`sasl::external_identity`]), stream restart, then resource binding.
    /// * No TLS (authentication disabled, as Contrail's plain mode): no SASL is offered, the
    ///   stream goes straight to binding, and the bare JID is the stream header's `from`
    ///   (its localpart, or the whole name when it has none) at our domain, or a generated
    ///   `anon-…` name. That is as much trust as a plain Contrail agent's header gets; an
    ///   operator who wants authentication turns TLS on.
    Client,
}

/// What the server requires of its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPolicy {
    /// STARTTLS is required before any stanza (`xmpp_auth_enable=true` /
    /// `xmpp_dns_auth_enable=true`). There is no optional-TLS mode: a server either
    /// requires TLS or does not offer it.
    pub tls_required: bool,
    /// Our name: the `from` of our stream headers (Contrail: `DEFAULT.hostname`).
    pub host_name: String,
    /// Reader bounds.
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the client's stream header.
    AwaitHeader,
    /// Features with `<required/>` STARTTLS sent; waiting for `<starttls/>`.
    AwaitStartTls,
    /// `<proceed/>` sent; the I/O layer runs the handshake.
    TlsPending,
    /// Features with SASL mechanisms sent; waiting for `<auth/>`.
    AwaitAuth,
    /// An empty challenge sent (`<auth/>` came without an initial response); waiting for
    /// `<response/>`.
    AwaitSaslResponse,
    /// Features with `<bind/>` sent; waiting for the bind IQ.
    AwaitBind,
    /// Negotiated; no further input is processed here.
    Done,
}

/// The server negotiator. See the module documentation of [`crate::negotiate`].
#[derive(Debug)]
pub struct ServerNegotiator {
    policy: ServerPolicy,
    profile: RfcProfile,
    reader: Reader,
    state: State,
    tls_done: bool,
    dialect: Option<Dialect>,
    actions: VecDeque<Action>,
    stream_counter: u64,
    /// The client certificate's identity, from the I/O layer after the handshake.
    peer: Option<PeerIdentity>,
    /// The domain of the stream: the first header's `to`, else our host name.
    domain: Option<Jid>,
    /// The client's last stream header.
    peer_header: Option<StreamHeader>,
    /// The first header's `from` (plain profile: the unauthenticated name).
    claimed: Option<String>,
    /// The bare JID SASL authenticated.
    authenticated: Option<Jid>,
    sasl_attempts: u8,
}

impl ServerNegotiator {
    /// A negotiator for a freshly accepted connection; RFC streams get
    /// [`RfcProfile::StreamOnly`].
    pub fn new(policy: ServerPolicy) -> Self {
        Self::with_profile(policy, RfcProfile::StreamOnly)
    }

    /// A negotiator serving RFC streams in `profile`.
    pub fn with_profile(policy: ServerPolicy, profile: RfcProfile) -> Self {
        let reader = Reader::new(policy.limits);
        Self {
            policy,
            profile,
            reader,
            state: State::AwaitHeader,
            tls_done: false,
            dialect: None,
            actions: VecDeque::new(),
            stream_counter: 0,
            peer: None,
            domain: None,
            peer_header: None,
            claimed: None,
            authenticated: None,
            sasl_attempts: 0,
        }
    }

    /// The dialect, once the client's header has been read.
    pub fn dialect(&self) -> Option<Dialect> {
        self.dialect
    }

    /// The receive buffer, to read the socket straight into; call [`Self::process`] after.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        self.reader.buffer_mut()
    }

    /// Appends received bytes and processes them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.reader.feed(bytes);
        self.process()
    }

    /// Processes buffered bytes until an action is pending or more input is needed.
    pub fn process(&mut self) -> Result<(), Error> {
        while self.actions.is_empty() && !matches!(self.state, State::TlsPending | State::Done) {
            let Some(event) = self.reader.next_event()? else {
                return Ok(());
            };
            self.handle(event)?;
        }
        Ok(())
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The TLS handshake succeeded: the client restarts the stream inside TLS. `peer` is
    /// the identity in the client's certificate (`tls::peer_identity`), the credential of
    /// SASL EXTERNAL; `None` when it presented none.
    pub fn tls_established(&mut self, peer: Option<PeerIdentity>) -> Result<(), Error> {
        if self.state != State::TlsPending {
            return Err(Error::BadFormat(
                "TLS established outside negotiation".into(),
            ));
        }
        self.tls_done = true;
        self.peer = peer;
        self.reader.restart();
        self.state = State::AwaitHeader;
        Ok(())
    }

    /// After `Established`: the reader, with anything the client already sent after its
    /// header (Contrail agents send a keepalive and their first IQs at once).
    pub fn into_reader(self) -> Reader {
        self.reader
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        match (self.state, event) {
            (_, Event::Whitespace(_)) => Ok(()),
            (_, Event::StreamClose) => Err(Error::Closed),
            (State::AwaitHeader, Event::StreamOpen(el)) => {
                let header = StreamHeader::from_element(&el)?;
                self.on_header(header)
            }
            (State::AwaitStartTls, Event::Element(el)) => match TlsNonza::from_element(&el) {
                Some(TlsNonza::StartTls) => {
                    // Whatever follows <starttls/> before our <proceed/> can only be filler
                    // (the C++ agent writes a "\n" there); anything else would be read by
                    // the TLS engine as a record, so refuse it now.
                    let rest = self.reader.take_buffered();
                    if !rest.iter().all(|b| is_filler(*b)) {
                        return Err(Error::NotWellFormed(
                            "data after <starttls/> before <proceed/>".into(),
                        ));
                    }
                    let dialect = self.dialect.unwrap_or(Dialect::Contrail);
                    let mut out = BytesMut::new();
                    TlsNonza::Proceed.write(&mut out, dialect);
                    self.actions.push_back(Action::Send(out.freeze()));
                    self.actions.push_back(Action::StartTls);
                    self.state = State::TlsPending;
                    Ok(())
                }
                _ => Err(Error::Unexpected {
                    element: el.name().to_owned(),
                    context: "before STARTTLS, which this server requires",
                    condition: Condition::PolicyViolation,
                }),
            },
            (State::AwaitAuth | State::AwaitSaslResponse, Event::Element(el))
                if el.ns() == ns::SASL =>
            {
                self.on_sasl(&el)
            }
            (State::AwaitBind, Event::Element(el)) if Iq::matches(&el) => self.on_bind(&el),
            (_, Event::StreamOpen(_)) => {
                Err(Error::BadFormat("stream header during negotiation".into()))
            }
            (_, Event::Element(el)) => Err(Error::Unexpected {
                element: el.name().to_owned(),
                context: "during stream negotiation",
                condition: Condition::NotAuthorized,
            }),
        }
    }

    fn on_header(&mut self, header: StreamHeader) -> Result<(), Error> {
        let dialect = header.dialect();
        if let Some(before) = self.dialect
            && before != dialect
        {
            return Err(Error::InvalidNamespace(format!(
                "stream restarted in the {dialect} dialect after {before}"
            )));
        }
        self.dialect = Some(dialect);
        self.stream_counter += 1;
        if dialect == Dialect::Rfc && self.profile == RfcProfile::Client && self.domain.is_none() {
            let to = header.to.as_deref().unwrap_or(&self.policy.host_name);
            let domain = Jid::parse(to)
                .ok()
                .filter(|j| j.local().is_none() && j.is_bare())
                .ok_or_else(|| Error::Identity {
                    detail: format!("the stream 'to' {to:?} is not a domain"),
                    condition: Condition::HostUnknown,
                })?;
            self.domain = Some(domain);
            self.claimed.clone_from(&header.from);
        }
        self.peer_header = Some(header.clone());
        let ours = match dialect {
            Dialect::Contrail => StreamHeader {
                from: Some(self.policy.host_name.clone()),
                to: header.from.clone(),
                id: Some(CONTRAIL_STREAM_ID.to_owned()),
                version: Some("1.0".to_owned()),
                lang: Some("en".to_owned()),
                default_ns: Some(ns::CLIENT.to_owned()),
            },
            Dialect::Rfc => StreamHeader {
                from: Some(
                    header
                        .to
                        .clone()
                        .unwrap_or_else(|| self.policy.host_name.clone()),
                ),
                to: header.from.clone(),
                id: Some(stream_id(self.stream_counter, &header)),
                version: Some("1.0".to_owned()),
                lang: Some("en".to_owned()),
                default_ns: header.default_ns.clone(),
            },
        };
        let mut out = BytesMut::with_capacity(512);
        ours.write(&mut out, dialect);

        let need_tls = self.policy.tls_required && !self.tls_done;
        if need_tls {
            Features {
                starttls: Some(true),
                ..Features::default()
            }
            .write(&mut out, dialect);
            self.actions.push_back(Action::Send(out.freeze()));
            self.state = State::AwaitStartTls;
            return Ok(());
        }
        match dialect {
            // Contrail: no features at all in plain mode and none after TLS (spec §3.2,
            // §3.3). In plain mode we also send one keepalive at once: harmless to the C++
            // agent (filler is consumed in every state) and it lets an agent that requires
            // TLS see immediately that this server will never offer it.
            Dialect::Contrail => {
                if !self.tls_done {
                    out.extend_from_slice(Dialect::Contrail.keepalive());
                }
            }
            Dialect::Rfc if self.profile == RfcProfile::Client => {
                // RFC 6120 §6.4.1: SASL before anything else once TLS is up; with TLS off
                // (no authentication configured) and after SASL success: binding.
                let sasl = self.policy.tls_required && self.authenticated.is_none();
                let features = Features {
                    mechanisms: if sasl {
                        vec![sasl::EXTERNAL.to_owned()]
                    } else {
                        Vec::new()
                    },
                    bind: !sasl,
                    ..Features::default()
                };
                features.write(&mut out, dialect);
                self.actions.push_back(Action::Send(out.freeze()));
                self.state = if sasl {
                    State::AwaitAuth
                } else {
                    State::AwaitBind
                };
                return Ok(());
            }
            // RFC, stream layer only: features after every stream start, empty here.
            Dialect::Rfc => Features::default().write(&mut out, dialect),
        }
        self.actions.push_back(Action::Send(out.freeze()));
        self.actions
            .push_back(Action::Established(Box::new(Negotiated {
                dialect,
                peer_header: header,
                tls: self.tls_done,
                features: None,
                jid: None,
            })));
        self.state = State::Done;
        Ok(())
    }

    fn send_sasl(&mut self, nonza: &SaslNonza) {
        let mut out = BytesMut::with_capacity(128);
        nonza.write(&mut out);
        self.actions.push_back(Action::Send(out.freeze()));
    }

    /// `<auth/>`, `<response/>`, `<abort/>` while SASL runs.
    fn on_sasl(&mut self, el: &Element) -> Result<(), Error> {
        let data = match (self.state, SaslNonza::from_element(el)) {
            (_, Some(Err(f))) => return self.sasl_failed(f),
            (State::AwaitAuth, Some(Ok(SaslNonza::Auth { mechanism, initial }))) => {
                if mechanism != sasl::EXTERNAL {
                    return self.sasl_failed(SaslFailure::new(
                        SaslCondition::InvalidMechanism,
                        format!("{mechanism} is not offered; use EXTERNAL"),
                    ));
                }
                match initial {
                    Some(d) => d,
                    None => {
                        // RFC 6120 §6.4.2: no initial response; ask for it with an empty
                        // challenge.
                        self.send_sasl(&SaslNonza::Challenge(None));
                        self.state = State::AwaitSaslResponse;
                        return Ok(());
                    }
                }
            }
            (State::AwaitSaslResponse, Some(Ok(SaslNonza::Response(d)))) => d.unwrap_or_default(),
            (_, Some(Ok(SaslNonza::Abort))) => {
                return self.sasl_failed(SaslFailure {
                    condition: SaslCondition::Aborted,
                    text: None,
                });
            }
            _ => {
                return Err(Error::Unexpected {
                    element: el.name().to_owned(),
                    context: "during SASL negotiation",
                    condition: Condition::NotAuthorized,
                });
            }
        };
        let authzid = match String::from_utf8(data) {
            Ok(a) => a,
            Err(_) => {
                return self.sasl_failed(SaslFailure::new(
                    SaslCondition::MalformedRequest,
                    "the authorization identity is not UTF-8",
                ));
            }
        };
        let domain = self.domain_name().to_owned();
        match sasl::external_identity(self.peer.as_ref(), &authzid, &domain) {
            Ok(jid) => {
                // RFC 6120 §6.4.6: after <success/> both sides restart the stream; the
                // reader restarts in this same step, so whatever the client pipelined after
                // its <auth/> is read as the new stream.
                self.send_sasl(&SaslNonza::Success(None));
                self.reader.restart();
                self.authenticated = Some(jid);
                self.state = State::AwaitHeader;
                Ok(())
            }
            Err(f) => self.sasl_failed(f),
        }
    }

    /// Sends `<failure/>` and lets the client retry, up to [`MAX_SASL_ATTEMPTS`].
    fn sasl_failed(&mut self, failure: SaslFailure) -> Result<(), Error> {
        self.send_sasl(&SaslNonza::Failure(failure.clone()));
        self.state = State::AwaitAuth;
        self.sasl_attempts += 1;
        if self.sasl_attempts >= MAX_SASL_ATTEMPTS {
            return Err(Error::Identity {
                detail: format!("SASL failed {MAX_SASL_ATTEMPTS} times, last: {failure}"),
                condition: Condition::NotAuthorized,
            });
        }
        Ok(())
    }

    fn domain_name(&self) -> &str {
        self.domain
            .as_ref()
            .map_or(&self.policy.host_name, Jid::domain)
    }

    /// The bare JID to bind: the authenticated one, or (no authentication configured) the
    /// name the client claimed in its header, or a generated one.
    fn bare_jid(&self) -> Option<Jid> {
        if let Some(j) = &self.authenticated {
            return Some(j.clone());
        }
        let domain = self.domain_name();
        self.claimed
            .as_deref()
            .and_then(|c| Jid::parse(c).ok())
            .and_then(|j| Jid::bare(j.local().unwrap_or(j.domain()), domain))
            .or_else(|| {
                let id = stream_id(self.stream_counter, &StreamHeader::default());
                Jid::bare(&format!("anon-{id}"), domain)
            })
    }

    /// The bind IQ (RFC 6120 §7): answered with the full JID, and the stream is up.
    fn on_bind(&mut self, el: &Element) -> Result<(), Error> {
        let iq = Iq::from_element(el)?;
        let Some(req) = BindRequest::from_iq(&iq) else {
            return Err(Error::Unexpected {
                element: el.name().to_owned(),
                context: "before resource binding",
                condition: Condition::NotAuthorized,
            });
        };
        let Some(bare) = self.bare_jid() else {
            return Err(Error::Identity {
                detail: format!("no JID can be formed at {:?}", self.domain_name()),
                condition: Condition::HostUnknown,
            });
        };
        // RFC 6120 §7.6.2.1: the server generates a resourcepart when the client asks for
        // none. Uniqueness against other sessions is the session layer's business (it
        // refuses a duplicate full JID with a `conflict` stream error).
        let resource = req
            .resource
            .unwrap_or_else(|| stream_id(self.stream_counter, &StreamHeader::default()));
        let full = match bare.with_resource(&resource) {
            Ok(j) => j,
            Err(e) => {
                let err = iq
                    .error(&StanzaError::new(StanzaCondition::BadRequest).with_text(e.to_string()));
                let mut out = BytesMut::new();
                err.write(&mut XmlWriter::new(&mut out, Style::Compact));
                self.actions.push_back(Action::Send(out.freeze()));
                return Ok(());
            }
        };
        let mut out = BytesMut::with_capacity(256);
        bind_result(&iq, &full).write(&mut XmlWriter::new(&mut out, Style::Compact));
        self.actions.push_back(Action::Send(out.freeze()));
        self.actions
            .push_back(Action::Established(Box::new(Negotiated {
                dialect: Dialect::Rfc,
                peer_header: self.peer_header.clone().unwrap_or_default(),
                tls: self.tls_done,
                features: None,
                jid: Some(full),
            })));
        self.state = State::Done;
        Ok(())
    }
}

/// A stream id that differs per stream: a hash of a counter and the peer's header, hex.
/// (RFC 6120 §4.7.3 asks for unpredictability against stream-id guessing in dialback; we do
/// not implement dialback, so uniqueness within the process is what matters.)
fn stream_id(counter: u64, header: &StreamHeader) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(counter);
    if let Some(f) = &header.from {
        h.write(f.as_bytes());
    }
    format!("{:016x}", h.finish())
}
