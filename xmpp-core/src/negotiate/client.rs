//! The initiator (client) side: the vrouter agent's channels and the load generator.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::{Action, Negotiated};
use crate::error::Error;
use crate::jid::Jid;
use crate::sasl::{Credentials, SaslNonza};
use crate::stanza::bind::{BindRequest, bound_jid};
use crate::stanza::{Iq, IqType};
use crate::stream::{Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::xml::{Element, Event, Limits, Reader, Style, XmlWriter, is_filler};

/// The id of our bind request.
const BIND_ID: &str = "bind-1";

/// The RFC 6120 client profile of the initiator: authenticate, restart, bind.
///
/// After TLS (or in plaintext when TLS is not required), the server's features decide:
/// SASL mechanisms offered → the first of `credentials` the server offers (PLAIN only
/// inside TLS) is used, `<success/>` restarts the stream; `<bind/>` offered → bind
/// `resource`; neither → the stream is established as it is (a server that authenticates
/// by TLS alone, like the Contrail mock of the interop notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// What to authenticate with, in preference order.
    pub credentials: Vec<Credentials>,
    /// The resource to ask for; `None` lets the server choose.
    pub resource: Option<String>,
}

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
    /// `<auth/>` sent; waiting for `<success/>` or `<failure/>`.
    AwaitSaslResult,
    /// The bind IQ sent; waiting for its result.
    AwaitBindResult,
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
    login: Option<Login>,
    /// The credentials whose `<auth/>` is outstanding.
    mechanism: Option<Credentials>,
    authenticated: bool,
    /// The features that led to binding, kept for [`Negotiated::features`].
    last_features: Option<Features>,
}

impl ClientNegotiator {
    /// Starts a negotiation: the first action sends our stream header. RFC streams end
    /// after the features that follow TLS (no SASL, no binding): see [`Self::with_login`].
    pub fn new(policy: ClientPolicy) -> Self {
        Self::build(policy, None)
    }

    /// Starts a negotiation in the RFC 6120 client profile (`policy.dialect` must be
    /// [`Dialect::Rfc`]; a Contrail policy ignores `login`).
    pub fn with_login(policy: ClientPolicy, login: Login) -> Self {
        Self::build(policy, Some(login))
    }

    fn build(policy: ClientPolicy, login: Option<Login>) -> Self {
        let reader = Reader::new(policy.limits);
        let login = login.filter(|_| policy.dialect == Dialect::Rfc);
        let mut n = Self {
            policy,
            reader,
            state: State::AwaitHeader,
            tls_done: false,
            server_header: None,
            actions: VecDeque::new(),
            login,
            mechanism: None,
            authenticated: false,
            last_features: None,
        };
        n.send_header();
        n
    }

    fn send_header(&mut self) {
        // RFC 6120 §4.7.1: an initiator that has no JID to claim yet omits `from`
        // (ejabberd refuses an empty one); Contrail agents always send theirs.
        let from = (self.policy.dialect == Dialect::Contrail || !self.policy.from.is_empty())
            .then(|| self.policy.from.clone());
        let header = StreamHeader {
            from,
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
                State::AwaitHeader
                    | State::AwaitFeatures
                    | State::AwaitProceed
                    | State::AwaitSaslResult
                    | State::AwaitBindResult
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
                        self.establish(None, None);
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
            (State::AwaitSaslResult, Event::Element(el)) if el.ns() == crate::stanza::ns::SASL => {
                self.on_sasl(&el)
            }
            (State::AwaitBindResult, Event::Element(el)) if Iq::matches(&el) => self.on_bind(&el),
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
            return self.after_tls(features);
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
            (false, _) => self.after_tls(features),
        }
    }

    /// Features once TLS is settled (negotiated, or not required): the login steps.
    fn after_tls(&mut self, features: Features) -> Result<(), Error> {
        let Some(login) = &self.login else {
            self.establish(Some(features), None);
            return Ok(());
        };
        if !self.authenticated && !features.mechanisms.is_empty() {
            let tls = self.tls_done;
            let chosen = login
                .credentials
                .iter()
                .find(|c| {
                    (tls || c.allowed_without_tls())
                        && features.mechanisms.iter().any(|m| m == c.mechanism())
                })
                .cloned();
            let Some(creds) = chosen else {
                return Err(Error::Identity {
                    detail: format!(
                        "the server offers SASL {:?}; we have {:?}{}",
                        features.mechanisms,
                        login
                            .credentials
                            .iter()
                            .map(Credentials::mechanism)
                            .collect::<Vec<_>>(),
                        if tls { "" } else { " (PLAIN only inside TLS)" }
                    ),
                    condition: Condition::NotAuthorized,
                });
            };
            let mut out = BytesMut::with_capacity(128);
            creds.auth().write(&mut out);
            self.actions.push_back(Action::Send(out.freeze()));
            self.mechanism = Some(creds);
            self.state = State::AwaitSaslResult;
            return Ok(());
        }
        if features.bind {
            let req = BindRequest {
                resource: login.resource.clone(),
            };
            let mut out = BytesMut::with_capacity(160);
            req.to_iq(BIND_ID)
                .write(&mut XmlWriter::new(&mut out, Style::Compact));
            self.actions.push_back(Action::Send(out.freeze()));
            self.last_features = Some(features);
            self.state = State::AwaitBindResult;
            return Ok(());
        }
        self.establish(Some(features), None);
        Ok(())
    }

    fn on_sasl(&mut self, el: &Element) -> Result<(), Error> {
        let mechanism = self.mechanism.as_ref().map_or("?", Credentials::mechanism);
        match SaslNonza::from_element(el) {
            Some(Ok(SaslNonza::Success(_))) => {
                // RFC 6120 §6.4.6: restart; the reader restarts in this same step, so the
                // server's new header (possibly already buffered) is read as a new stream.
                self.reader.restart();
                self.authenticated = true;
                self.state = State::AwaitHeader;
                self.send_header();
                Ok(())
            }
            Some(Ok(SaslNonza::Failure(f))) => Err(Error::Identity {
                detail: format!("the server refused SASL {mechanism}: {f}"),
                condition: Condition::NotAuthorized,
            }),
            Some(Ok(SaslNonza::Challenge(_)))
                if matches!(self.mechanism, Some(Credentials::External { .. })) =>
            {
                // Only a server that ignored our initial response asks again: repeat it.
                let authzid = match &self.mechanism {
                    Some(Credentials::External { authzid }) => authzid.clone(),
                    _ => None,
                };
                let mut out = BytesMut::new();
                SaslNonza::Response(Some(authzid.unwrap_or_default().into_bytes())).write(&mut out);
                self.actions.push_back(Action::Send(out.freeze()));
                Ok(())
            }
            _ => Err(unexpected(el, "while waiting for the SASL outcome")),
        }
    }

    fn on_bind(&mut self, el: &Element) -> Result<(), Error> {
        let iq = Iq::from_element(el)?;
        if iq.id.as_deref() != Some(BIND_ID) || iq.is_request() {
            return Err(unexpected(el, "while waiting for the bind result"));
        }
        if iq.kind == IqType::Error {
            let why = iq
                .stanza_error()
                .map_or_else(|| "no error condition".to_owned(), |e| e.to_string());
            return Err(Error::Identity {
                detail: format!("the server refused resource binding: {why}"),
                condition: Condition::NotAuthorized,
            });
        }
        let jid = bound_jid(&iq)
            .ok_or_else(|| Error::BadFormat("bind result without a valid <jid/>".into()))?;
        let features = self.last_features.take();
        self.establish(features, Some(jid));
        Ok(())
    }

    fn establish(&mut self, features: Option<Features>, jid: Option<Jid>) {
        self.state = State::Done;
        self.actions
            .push_back(Action::Established(Box::new(Negotiated {
                dialect: self.policy.dialect,
                peer_header: self.server_header.clone().unwrap_or_default(),
                tls: self.tls_done,
                features,
                jid,
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
