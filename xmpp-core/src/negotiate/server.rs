//! The responder (server) side: control node and DNS node.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::{Action, Negotiated};
use crate::error::Error;
use crate::stanza::ns;
use crate::stream::{CONTRAIL_STREAM_ID, Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::xml::{Event, Limits, Reader, is_filler};

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
    /// Negotiated; no further input is processed here.
    Done,
}

/// The server negotiator. See the module documentation of [`crate::negotiate`].
#[derive(Debug)]
pub struct ServerNegotiator {
    policy: ServerPolicy,
    reader: Reader,
    state: State,
    tls_done: bool,
    dialect: Option<Dialect>,
    actions: VecDeque<Action>,
    stream_counter: u64,
}

impl ServerNegotiator {
    /// A negotiator for a freshly accepted connection.
    pub fn new(policy: ServerPolicy) -> Self {
        let reader = Reader::new(policy.limits);
        Self {
            policy,
            reader,
            state: State::AwaitHeader,
            tls_done: false,
            dialect: None,
            actions: VecDeque::new(),
            stream_counter: 0,
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
        while self.actions.is_empty()
            && matches!(self.state, State::AwaitHeader | State::AwaitStartTls)
        {
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

    /// The TLS handshake succeeded: the client restarts the stream inside TLS.
    pub fn tls_established(&mut self) -> Result<(), Error> {
        if self.state != State::TlsPending {
            return Err(Error::BadFormat(
                "TLS established outside negotiation".into(),
            ));
        }
        self.tls_done = true;
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
            // RFC: features after every stream start. SASL and binding are offered by the
            // layer above once it supports them; until then the feature set is empty.
            Dialect::Rfc => Features::default().write(&mut out, dialect),
        }
        self.actions.push_back(Action::Send(out.freeze()));
        self.actions
            .push_back(Action::Established(Box::new(Negotiated {
                dialect,
                peer_header: header,
                tls: self.tls_done,
                features: None,
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
