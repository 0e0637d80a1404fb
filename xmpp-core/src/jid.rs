//! JIDs (RFC 7622): `[localpart@]domainpart[/resourcepart]`, as far as this crate needs them.
//!
//! Parsing splits and bounds the three parts (each 1..=1023 bytes, RFC 7622 §3) and
//! refuses the characters a localpart may never contain; it does not run the full PRECIS
//! profiles (there is no Unicode normalisation here). Domains are compared ASCII
//! case-insensitively and stored lower-cased; local and resource parts are kept as given.

use std::fmt;

/// Bound on each part (RFC 7622 §3.2–3.4: at most 1023 octets).
pub const MAX_PART: usize = 1023;

/// A parsed JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

/// Why a string is not a JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JID {jid:?}: {reason}")]
pub struct JidError {
    /// The text given.
    pub jid: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Characters RFC 7622 §3.3.1 forbids in a localpart (besides controls and space).
const LOCAL_FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];

fn valid_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_PART && !s.chars().any(char::is_control)
}

impl Jid {
    /// Parses `[local@]domain[/resource]`.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        let err = |reason| JidError {
            jid: s.to_owned(),
            reason,
        };
        // RFC 7622 §3.1: the resource is everything after the first '/', so it may itself
        // contain '@' and '/'; the localpart ends at the first '@' before that.
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if !valid_part(domain) || domain.contains(['@', ' ']) {
            return Err(err("bad domainpart"));
        }
        if let Some(l) = local
            && (!valid_part(l) || l.contains(LOCAL_FORBIDDEN) || l.contains(' '))
        {
            return Err(err("bad localpart"));
        }
        if let Some(r) = resource
            && !valid_part(r)
        {
            return Err(err("bad resourcepart"));
        }
        Ok(Self {
            local: local.map(str::to_owned),
            domain: domain.to_ascii_lowercase(),
            resource: resource.map(str::to_owned),
        })
    }

    /// A bare JID `local@domain` from parts already known to be valid; `None` if not.
    pub fn bare(local: &str, domain: &str) -> Option<Self> {
        Self::parse(&format!("{local}@{domain}"))
            .ok()
            .filter(|j| j.resource.is_none())
    }

    /// The localpart.
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// The domainpart (lower case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The resourcepart.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// The same JID without its resource.
    pub fn to_bare(&self) -> Jid {
        Jid {
            resource: None,
            ..self.clone()
        }
    }

    /// This JID with `resource` (which must be a valid resourcepart).
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        if !valid_part(resource) {
            return Err(JidError {
                jid: format!("{self}/{resource}"),
                reason: "bad resourcepart",
            });
        }
        Ok(Jid {
            resource: Some(resource.to_owned()),
            ..self.clone()
        })
    }

    /// Whether the resourcepart is absent.
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let j = Jid::parse("agent1@CCert.Localhost/res/with@at").expect("jid");
        assert_eq!(j.local(), Some("agent1"));
        assert_eq!(j.domain(), "ccert.localhost");
        assert_eq!(j.resource(), Some("res/with@at"));
        assert_eq!(j.to_string(), "agent1@ccert.localhost/res/with@at");
        assert_eq!(j.to_bare().to_string(), "agent1@ccert.localhost");
        let d = Jid::parse("localhost").expect("domain");
        assert_eq!((d.local(), d.resource()), (None, None));
        assert_eq!(
            Jid::bare("compute-1", "ctrl").map(|j| j.to_string()),
            Some("compute-1@ctrl".into())
        );
    }

    #[test]
    fn refusals() {
        for bad in ["", "@d", "a@", "a@d/", "a b@d", "a:b@d", "d/\u{1}", "a@b@c"] {
            assert!(Jid::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Jid::parse(&"x".repeat(1024)).is_err());
        assert!(Jid::bare("a/b", "d").is_none());
    }
}
