//! Namespace URIs and fixed Contrail names, in one place.

/// `http://etherx.jabber.org/streams` (the `stream:` prefix).
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// `jabber:client`: client-to-server stanzas (RFC 6120).
pub const CLIENT: &str = "jabber:client";
/// `jabber:server`: server-to-server stanzas (RFC 6120).
pub const SERVER: &str = "jabber:server";
/// STARTTLS (RFC 6120 §5).
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL (RFC 6120 §6).
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding (RFC 6120 §7).
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Stream error conditions (RFC 6120 §4.9.3).
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions (RFC 6120 §8.3.3).
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// XEP-0060 publish-subscribe; Contrail uses it for `<pubsub>` and `<event>` alike.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0060 event notifications (standard peers).
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// XEP-0060 error conditions (`<not-subscribed/>`, `<invalid-payload/>`...).
pub const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// Legacy session establishment (RFC 3921 §3), answered as a no-op.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0199 ping.
pub const PING: &str = "urn:xmpp:ping";
/// `xml:` prefix namespace.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";

/// The control node's JID (spec §1): the agent's stream `to`, the `from` of routes.
pub const CONTROL_JID: &str = "network-control@contrailsystems.com";
/// The DNS node's JID (spec §1).
pub const DNS_JID: &str = "network-dns@contrailsystems.com";
/// Resource for routing traffic.
pub const RESOURCE_BGP: &str = "bgp-peer";
/// Resource for IF-MAP config traffic.
pub const RESOURCE_CONFIG: &str = "config";
/// Resource for DNS traffic.
pub const RESOURCE_DNS: &str = "dns-peer";
/// The end-of-RIB node string (spec §5.8).
pub const EOR_NODE: &str = "0/0/EndOfRib";
