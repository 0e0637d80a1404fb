//! The initiator (client) side: the vrouter agent's channels and the load generator.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::{Action, Negotiated};
use crate::error::Error;
use crate::stream::{Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::xml::{Event, Limits, Reader, is_filler};

/// What the client sends and requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    /// The dialect to speak.
    pub dialect: Dialect,
    /// STARTTLS is required (`xmpp_auth_enable` / `xmpp_dns_auth_enable`): never fall back
    /// to plaintext.
    pub tls_required: bool,
    /// Our stream `from` (Contrail: the agent host name, or `host/dns`).
    pub from: String,
    /// The stream `to` (Contrail: the control or DNS JID).
    pub to: String,
    /// The header's default namespace: the sub-cluster name or `""` for Contrail,
    /// `jabber:client` for RFC peers.
    pub default_ns: String,
    /// Reader bounds.
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our header is queued; waiting for the server's.
    AwaitHeader,
    /// Waiting for `<stream:features>`.
    AwaitFeatures,
    /// `<starttls/>` sent; waiting for `<proceed/>`.
    AwaitProceed,
    /// The I/O layer runs the handshake.
    TlsPending,
    /// Negotiated.
    Done,
}

/// The client negotiator. See the module documentation of [`crate::negotiate`].
#[derive(Debug)]
pub struct ClientNegotiator {
    policy: ClientPolicy,
    reader: Reader,
    state: State,
    tls_done: bool,
    server_header: Option<StreamHeader>,
    actions: VecDeque<Action>,
}

impl ClientNegotiator {
    /// Starts a negotiation: the first action sends our stream header.
    pub fn new(policy: ClientPolicy) -> Self {
        let reader = Reader::new(policy.limits);
        let mut n = Self {
            policy,
            reader,
            state: State::AwaitHeader,
            tls_done: false,
            server_header: None,
            actions: VecDeque::new(),
        };
        n.send_header();
        n
    }

    fn send_header(&mut self) {
        let header = StreamHeader {
            from: Some(self.policy.from.clone()),
            to: Some(self.policy.to.clone()),
            id: None,
            version: Some("1.0".to_owned()),
            lang: Some("en".to_owned()),
            default_ns: Some(self.policy.default_ns.clone()),
        };
        let mut out = BytesMut::with_capacity(256);
        header.write(&mut out, self.policy.dialect);
        self.actions.push_back(Action::Send(out.freeze()));
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
            && matches!(
                self.state,
                State::AwaitHeader | State::AwaitFeatures | State::AwaitProceed
            )
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

    /// The TLS handshake succeeded: restart the stream inside TLS.
    pub fn tls_established(&mut self) -> Result<(), Error> {
        if self.state != State::TlsPending {
            return Err(Error::BadFormat(
                "TLS established outside negotiation".into(),
            ));
        }
        self.tls_done = true;
        self.reader.restart();
        self.state = State::AwaitHeader;
        self.send_header();
        Ok(())
    }

    /// After `Established`: the reader, with anything the server already sent.
    pub fn into_reader(self) -> Reader {
        self.reader
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let dialect = self.policy.dialect;
        match (self.state, event) {
            (State::AwaitFeatures, Event::Whitespace(_))
                if dialect == Dialect::Contrail && !self.tls_done =>
            {
                // A Contrail server that requires TLS sends its features right after its
                // header; keepalives mean it went straight to Established in plain mode.
                Err(Error::TlsRequired(
                    "the server did not offer STARTTLS (it sent keepalives instead: it runs \
                     without TLS; check xmpp_auth_enable on both sides)"
                        .into(),
                ))
            }
            (_, Event::Whitespace(_)) => Ok(()),
            (_, Event::StreamClose) => Err(Error::Closed),
            (State::AwaitHeader, Event::StreamOpen(el)) => {
                let header = StreamHeader::from_element(&el)?;
                self.server_header = Some(header);
                match dialect {
                    Dialect::Contrail if !self.policy.tls_required || self.tls_done => {
                        self.establish(None);
                    }
                    _ => self.state = State::AwaitFeatures,
                }
                Ok(())
            }
            (State::AwaitFeatures, Event::Element(el)) if Features::matches(&el) => {
                let features = Features::from_element(&el)?;
                self.on_features(features)
            }
            (State::AwaitProceed, Event::Element(el)) => match TlsNonza::from_element(&el) {
                Some(TlsNonza::Proceed) => {
                    // Spec §3.4: the C++ server writes "\n" after <proceed/>; it must not
                    // reach the TLS engine. Anything but filler here is a protocol error.
                    let rest = self.reader.take_buffered();
                    if !rest.iter().all(|b| is_filler(*b)) {
                        return Err(Error::NotWellFormed(
                            "data after <proceed/> before the TLS handshake".into(),
                        ));
                    }
                    self.actions.push_back(Action::StartTls);
                    self.state = State::TlsPending;
                    Ok(())
                }
                Some(TlsNonza::Failure) => Err(Error::TlsRequired(
                    "the server answered <failure/> to STARTTLS".into(),
                )),
                _ => Err(unexpected(&el, "while waiting for <proceed/>")),
            },
            (_, Event::Element(el)) => {
                if crate::stream::StreamError::matches(&el) {
                    return Err(Error::Peer(crate::stream::StreamError::from_element(&el)));
                }
                Err(unexpected(&el, "during stream negotiation"))
            }
            (_, Event::StreamOpen(_)) => Err(Error::BadFormat(
                "second stream header during negotiation".into(),
            )),
        }
    }

    fn on_features(&mut self, features: Features) -> Result<(), Error> {
        if self.tls_done {
            self.establish(Some(features));
            return Ok(());
        }
        match (self.policy.tls_required, features.starttls) {
            (true, Some(_)) => {
                let mut out = BytesMut::new();
                TlsNonza::StartTls.write(&mut out, self.policy.dialect);
                self.actions.push_back(Action::Send(out.freeze()));
                self.state = State::AwaitProceed;
                Ok(())
            }
            (true, None) => Err(Error::TlsRequired(
                "the server did not offer STARTTLS; refusing to continue in plaintext".into(),
            )),
            (false, Some(true)) => Err(Error::TlsRequired(
                "the server requires STARTTLS but TLS is disabled here (set the auth flag \
                 to true on this side, with certificates)"
                    .into(),
            )),
            (false, _) => {
                self.establish(Some(features));
                Ok(())
            }
        }
    }

    fn establish(&mut self, features: Option<Features>) {
        self.state = State::Done;
        self.actions
            .push_back(Action::Established(Box::new(Negotiated {
                dialect: self.policy.dialect,
                peer_header: self.server_header.clone().unwrap_or_default(),
                tls: self.tls_done,
                features,
            })));
    }
}

fn unexpected(el: &crate::xml::Element, context: &'static str) -> Error {
    Error::Unexpected {
        element: el.name().to_owned(),
        context,
        condition: Condition::UnsupportedStanzaType,
    }
}
