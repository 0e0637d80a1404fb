//! One agent's DNS session: negotiation, identity checks, then DNS update IQs (spec §7)
//! into the record store. Nothing is ever sent back but keepalives (contrail-dns answers
//! nothing either).
//!
//! A `jabber:client` stream is served in the RFC 6120 profile instead ([`RfcProfile::Client`]:
//! SASL EXTERNAL, binding; the session is named by its bound JID) and every IQ request
//! gets its answer (RFC 6120 §8.2.3): a DNS update a `result` (or `bad-request`), XEP-0199
//! ping a `result`, anything else `service-unavailable`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, info_span, warn};
use xmpp_core::contrail::PayloadError;
use xmpp_core::contrail::dns::DnsUpdate;
use xmpp_core::io::{Incoming, XmppStream, accept_with};
use xmpp_core::negotiate::{RfcProfile, ServerPolicy};
use xmpp_core::stanza::{Iq, Message, StanzaCondition, StanzaError, ping};
use xmpp_core::stream::{Condition, Dialect};
use xmpp_core::xml::Element;
use xmpp_core::{Error, tls};

use crate::server::{SessionHandle, SessionId, SessionStats, Shared, lock, now};

/// Runs one accepted connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, remote: SocketAddr) {
    let id = shared.next_id();
    let span = info_span!("session", id, peer = %remote);
    async move {
        let local = tcp.local_addr().ok();
        let settings = &shared.settings;
        let policy = ServerPolicy {
            tls_required: settings.tls.is_some(),
            host_name: settings.hostname.clone(),
            limits: settings.limits,
        };
        let tls_cfg = settings.tls.as_ref().map(tls::ServerTls::current);
        let negotiated = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = accept_with(tcp, policy, RfcProfile::Client, tls_cfg, settings.timing) => r,
        };
        let mut stream = match negotiated {
            Ok(s) => s,
            Err(e) => {
                shared
                    .metrics
                    .negotiation_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, tls_required = settings.tls.is_some(),
                    "session refused during stream negotiation");
                return;
            }
        };
        let (name, jid) = match admit(&shared, &stream, id, remote) {
            Ok(n) => n,
            Err(e) => {
                shared
                    .metrics
                    .identity_refusals
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "session refused");
                stream.close(Some(&e)).await;
                return;
            }
        };
        let tls_version = stream.transport().tls_version().map(|v| format!("{v:?}"));
        let handle = Arc::new(SessionHandle {
            id,
            name: name.clone(),
            jid,
            remote,
            local,
            tls: stream.negotiated().tls,
            tls_version,
            dialect: stream.negotiated().dialect,
            stats: SessionStats {
                stanzas_received: Default::default(),
                updates: Default::default(),
                entries_rejected: Default::default(),
                last_event: Mutex::new("xmsm::EvXmppOpen"),
                established_at: SystemTime::now(),
            },
        });
        shared.register(handle.clone());
        shared.metrics.established.fetch_add(1, Ordering::Relaxed);
        info!(agent = %name, tls = handle.tls,
            tls_version = handle.tls_version.as_deref().unwrap_or("-"),
            dialect = %handle.dialect, "session up");

        let session = Session {
            shared: &shared,
            handle: &handle,
            rfc: handle.dialect == Dialect::Rfc,
        };
        let result = session.serve(&mut stream).await;
        let reason = match &result {
            Ok(()) => "shutdown".to_owned(),
            Err(e) => e.to_string(),
        };
        shared.unregister(&handle, &reason);
        info!(agent = %name, reason = %reason, "session down");
        let err = result.err().or(Some(Error::Shutdown));
        stream.close(err.as_ref()).await;
    }
    .instrument(span)
    .await;
}

/// The agent name in a DNS stream `from`: the agent writes `<hostname>/dns` (spec §1), and
/// the part before the `/` is what its certificate and the control channel know it by.
pub fn agent_name(from: &str) -> &str {
    from.split_once('/').map_or(from, |(name, _)| name)
}

/// Checks who the peer says it is: a name is required; with TLS, the agent name must be the
/// certificate's CN or a subject alternative name (unless `xmpp_check_peer_name=false`);
/// and it must not be held by another live session (spec §5.6). Returns the agent name and
/// the stream `from`.
fn admit(
    shared: &Shared,
    stream: &XmppStream<TcpStream>,
    id: SessionId,
    remote: SocketAddr,
) -> Result<(String, String), Error> {
    // RFC client: SASL EXTERNAL tied the bound JID to the certificate; it only has to be
    // unique (`conflict` otherwise, RFC 6120 §4.9.3.3).
    if let Some(bound) = &stream.negotiated().jid {
        let name = bound.to_string();
        shared
            .claim_name(&name, id, remote.ip())
            .map_err(|detail| Error::Identity {
                detail,
                condition: Condition::Conflict,
            })?;
        return Ok((name.clone(), name));
    }
    let jid = stream
        .negotiated()
        .peer_header
        .from
        .clone()
        .unwrap_or_default();
    let name = agent_name(&jid).to_owned();
    if name.is_empty() {
        return Err(Error::Identity {
            detail: format!("the stream header 'from' {jid:?} names no agent"),
            condition: Condition::InvalidFrom,
        });
    }
    if stream.negotiated().tls && shared.settings.check_peer_name {
        let certs = stream.transport().peer_certificates().unwrap_or(&[]);
        let identity = tls::peer_identity(certs).map_err(|e| Error::Identity {
            detail: e.to_string(),
            condition: Condition::InvalidFrom,
        })?;
        if !identity.matches_name(&name) {
            return Err(Error::Identity {
                detail: format!(
                    "agent name {name:?} (from {jid:?}) matches neither the CN nor a subject \
                     alternative name of its certificate ({identity:?}); set \
                     xmpp_check_peer_name=false only for legacy certificates"
                ),
                condition: Condition::InvalidFrom,
            });
        }
    }
    shared
        .claim_name(&name, id, remote.ip())
        .map_err(|detail| Error::Identity {
            detail,
            condition: Condition::Conflict,
        })?;
    Ok((name, jid))
}

struct Session<'a> {
    shared: &'a Shared,
    handle: &'a SessionHandle,
    /// An RFC 6120 client: every IQ request is answered.
    rfc: bool,
}

impl Session<'_> {
    async fn serve(&self, stream: &mut XmppStream<TcpStream>) -> Result<(), Error> {
        loop {
            let incoming = tokio::select! {
                () = self.shared.shutdown.cancelled() => return Ok(()),
                r = stream.next() => r?,
            };
            match incoming {
                Incoming::Keepalive => self.event("xmsm::EvXmppKeepalive"),
                Incoming::Element(el) => {
                    self.handle
                        .stats
                        .stanzas_received
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = self.on_element(&el)? {
                        stream.queue(&reply.to_element());
                        stream.flush().await?;
                    }
                }
            }
        }
    }

    fn event(&self, name: &'static str) {
        *lock(&self.handle.stats.last_event) = name;
    }

    /// Handles one element; returns the IQ answer an RFC client gets.
    fn on_element(&self, el: &Element) -> Result<Option<Iq>, Error> {
        if Message::matches(el) {
            self.event("xmsm::EvXmppMessageStanza");
            debug!("ignoring message from agent");
            return Ok(None);
        }
        if !Iq::matches(el) {
            debug!(element = el.name(), "ignoring element");
            return Ok(None);
        }
        self.event("xmsm::EvXmppIqStanza");
        if self.rfc {
            return self.on_rfc_iq(el);
        }
        self.on_update(el).map(|_| None)
    }

    /// RFC 6120 §8.2.3: exactly one `result` or `error` per request; responses are dropped.
    fn on_rfc_iq(&self, el: &Element) -> Result<Option<Iq>, Error> {
        let iq = Iq::from_element(el)?;
        if !iq.is_request() {
            return Ok(None);
        }
        if ping::is_ping(&iq) || ping::is_session(&iq) {
            return Ok(Some(iq.result()));
        }
        if el.find_descendant("dns").is_none() {
            return Ok(Some(
                iq.error(&StanzaError::new(StanzaCondition::ServiceUnavailable)),
            ));
        }
        Ok(Some(match self.on_update(el) {
            Ok(()) => iq.result(),
            Err(e) => {
                iq.error(&StanzaError::new(StanzaCondition::BadRequest).with_text(e.to_string()))
            }
        }))
    }

    /// A DNS update IQ (spec §7). An error closes a Contrail agent's session; an RFC
    /// client gets it as a `bad-request` instead.
    fn on_update(&self, el: &Element) -> Result<(), Error> {
        if el.find_descendant("dns").is_none() {
            debug!(iq_type = ?el.get_attr("type"), "ignoring iq without a dns payload");
            return Ok(());
        }
        let update = match DnsUpdate::from_iq(el) {
            Ok(u) => u,
            Err(e @ PayloadError::Empty { .. }) => {
                // contrail-dns ignores updates with an empty virtual-dns or zone (spec §7).
                self.shared
                    .metrics
                    .updates_ignored
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "ignoring DNS update");
                return Ok(());
            }
            Err(e) => {
                // Anything else that does not parse as an update closes this session (and
                // only this one): the agent's records stay for the grace period and it
                // resends them on reconnect.
                self.shared
                    .metrics
                    .malformed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Error::BadFormat(format!("malformed DNS update: {e}")));
            }
        };
        self.apply(&update);
        Ok(())
    }

    fn apply(&self, update: &DnsUpdate) {
        let applied = self
            .shared
            .records_mut()
            .apply(&self.handle.name, update, now());
        let m = &self.shared.metrics;
        m.updates.fetch_add(1, Ordering::Relaxed);
        m.records_added
            .fetch_add(applied.added as u64, Ordering::Relaxed);
        m.records_deleted
            .fetch_add(applied.deleted as u64, Ordering::Relaxed);
        m.entries_rejected
            .fetch_add(applied.rejected.len() as u64, Ordering::Relaxed);
        self.handle.stats.updates.fetch_add(1, Ordering::Relaxed);
        self.handle
            .stats
            .entries_rejected
            .fetch_add(applied.rejected.len() as u64, Ordering::Relaxed);
        for (i, e) in &applied.rejected {
            warn!(vdns = %update.virtual_dns, zone = %update.zone, entry = i, error = %e,
                "DNS entry refused");
        }
        debug!(vdns = %update.virtual_dns, zone = %update.zone, transid = update.transid,
            added = applied.added, refreshed = applied.refreshed, deleted = applied.deleted,
            "DNS update applied");
    }
}

#[cfg(test)]
mod tests {
    use super::agent_name;

    #[test]
    fn agent_name_is_the_part_before_the_resource() {
        assert_eq!(agent_name("compute-1/dns"), "compute-1");
        assert_eq!(agent_name("compute-1"), "compute-1");
        assert_eq!(agent_name("/dns"), "");
        assert_eq!(agent_name("a/b/c"), "a");
    }
}
