//! Contrail INI configuration: parsing, strict typed access and schema validation, with
//! every error naming the file, line, key and value.
//!
//! The three daemons read the same file format (`contrail-control.conf`,
//! `contrail-dns.conf`, `contrail-vrouter-agent.conf`, spec §8): `[SECTION]` headers,
//! `key=value` lines, full-line `#` / `;` comments. Keys before the first header belong to
//! [`DEFAULT_SECTION`]. Command-line flags use the same dotted names
//! (`--DEFAULT.xmpp_auth_enable=true`) and override the file ([`Ini::set_override_arg`]).
//!
//! Deliberate differences from Contrail's boost parser, all in the direction of failing at
//! startup rather than running with a setting the operator did not mean:
//!
//! * booleans are exactly `true` or `false` (boost also takes `yes`, `on`, `1`, any case,
//!   and reads an empty value as `true`), so a misspelt security flag never means "off";
//! * a `#` after a value is part of the value, not a comment (`xmpp_auth_enable=true # tls`
//!   is therefore rejected as "not a boolean" instead of being silently reinterpreted);
//! * a key set twice in one section is an error, not "first one wins";
//! * an unknown key is a [`Warning`] (real files carry keys for other subsystems, such as
//!   `collectors` or `log_file`), except when it looks like a misspelt or misplaced
//!   security key, which is a [`ConfigError`].
//!
//! ```
//! use xmpp_core::config::{Ini, KeyKind, KeySpec, Schema, SectionSpec, validate};
//!
//! const SCHEMA: Schema = Schema::new(&[SectionSpec::new(
//!     "DEFAULT",
//!     &[KeySpec::new("xmpp_auth_enable", KeyKind::Bool, "Require STARTTLS.")
//!         .security()
//!         .with_default("false")],
//! )]);
//!
//! let mut ini = Ini::parse("xmpp_auth_enable=false\nlog_file=/var/log/x.log\n", "x.conf")?;
//! ini.set_override_arg("--DEFAULT.xmpp_auth_enable=true")?;
//! let warnings = validate(&ini, &SCHEMA)?;
//! assert_eq!(warnings.len(), 1); // log_file: unknown, ignored
//! assert!(ini.get_bool_or("DEFAULT", "xmpp_auth_enable", false)?);
//! # Ok::<(), xmpp_core::config::ConfigError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The section that keys before any `[SECTION]` header belong to, as in boost.
pub const DEFAULT_SECTION: &str = "DEFAULT";

/// Largest configuration file [`Ini::load`] reads. Real Contrail files are a few KiB; the
/// cap keeps a wrong path (a log file, `/dev/zero`) from being read into memory whole.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Longest piece of an offending line quoted back in a [`ConfigError::Syntax`] message.
const MAX_QUOTED_CHARS: usize = 80;

// ---------------------------------------------------------------------------------------
// Errors and warnings
// ---------------------------------------------------------------------------------------

/// Where a setting came from; shown at the start of every error and warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line (1-based) of a configuration file, shown as `path:line`.
    File {
        /// The file as given to [`Ini::load`] or [`Ini::parse`].
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A `--SECTION.key=value` flag ([`Ini::set_override`]), shown as `command line`.
    CommandLine,
    /// A [`KeySpec::default`] value checked by [`Schema::check_defaults`].
    BuiltInDefault,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, line } => write!(f, "{}:{line}", path.display()),
            Self::CommandLine => f.write_str("command line"),
            Self::BuiltInDefault => f.write_str("built-in default"),
        }
    }
}

/// The setting an error is about: where it was set and what it said. Shown as
/// `path:line: [SECTION] key = "value"`. Boxed inside [`ConfigError`] to keep the error
/// small on the `Ok` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Where the value was set.
    pub at: Location,
    /// The section.
    pub section: String,
    /// The key as written.
    pub key: String,
    /// The value as written (trimmed).
    pub value: String,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            at,
            section,
            key,
            value,
        } = self;
        write!(f, "{at}: [{section}] {key} = {value:?}")
    }
}

/// Everything that can be wrong with a configuration. All variants are fatal: the daemon
/// reports the message and exits at startup, before binding any socket.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Fatal: the file could not be opened or read (missing, permissions, a directory).
    #[error("{}: cannot read configuration file: {source}", .path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// Fatal: the file is larger than [`MAX_FILE_BYTES`], so it is probably the wrong file.
    #[error("{}: configuration file is larger than {limit} bytes; is this the right file?", .path.display())]
    TooLarge {
        /// The path as given.
        path: PathBuf,
        /// [`MAX_FILE_BYTES`].
        limit: usize,
    },

    /// Fatal: the file is not UTF-8; `line` is where the first bad byte is.
    #[error("{}:{line}: configuration file is not valid UTF-8", .path.display())]
    NotUtf8 {
        /// The path as given.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },

    /// Fatal: a line that is neither a `[SECTION]` header, a `key=value`, a comment nor
    /// blank.
    #[error("{at}: malformed line {text:?}: {reason}")]
    Syntax {
        /// The offending line.
        at: Location,
        /// The line as written (trimmed, shortened if very long).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Fatal: one key set twice in the same section (in the file, or by two flags). Boost
    /// keeps the first silently; which one the operator meant is unknowable.
    #[error("{site}: set twice: first at {first}, again at {}", .site.at)]
    DuplicateKey {
        /// The second setting.
        site: Box<Site>,
        /// Where the key was set first.
        first: Location,
    },

    /// Fatal: a boolean that is not exactly `true` or `false`.
    #[error(
        "{site}: not a boolean: use exactly `true` or `false` (the keyword is \
         case-sensitive){}",
        bool_hint(&.site.value)
    )]
    InvalidBool {
        /// The offending setting.
        site: Box<Site>,
    },

    /// Fatal: an integer that is not a plain decimal number within `min..=max`.
    #[error("{site}: expected a whole number from {min} to {max}")]
    InvalidInt {
        /// The offending setting.
        site: Box<Site>,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },

    /// Fatal: any other value that does not parse as its key's kind (an empty path, an
    /// `ip[:port]` list entry that is not an address, ...).
    #[error("{site}: expected {expected}")]
    InvalidValue {
        /// The offending setting.
        site: Box<Site>,
        /// What would have been accepted.
        expected: String,
    },

    /// Fatal: an unknown key that is close to a security key (`xmpp_auth_enabled`,
    /// `XMPP_AUTH_ENABLE`, ...). As a mere warning, the misspelling would leave the
    /// protection at its default, which is off.
    #[error(
        "{site}: unknown key, close to the security key `{key}`: did you mean `{key}`{}? \
         (a misspelt security key would leave the protection at its default)",
        in_section(&.site.section, .suggestion.section),
        key = .suggestion.key
    )]
    UnknownSecurityKey {
        /// The offending setting.
        site: Box<Site>,
        /// The security key it resembles.
        suggestion: Suggestion,
    },

    /// Fatal: a security key under a section where the daemon does not read it (for
    /// example `xmpp_auth_enable` under `[CONTROL-NODE]` instead of `[DEFAULT]`).
    #[error(
        "{site}: `{}` belongs in [{expected_section}], not [{}]: move it there (here it \
         would be ignored and the protection left at its default)",
        .site.key,
        .site.section
    )]
    MisplacedSecurityKey {
        /// The offending setting.
        site: Box<Site>,
        /// The section the schema declares the key in.
        expected_section: &'static str,
    },

    /// Fatal: a command-line override that is not `SECTION.key=value`.
    #[error("command line: {arg:?}: {reason}: expected `--SECTION.key=value`")]
    BadOverride {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Extra advice for the values most likely to come from a boost-era config file.
fn bool_hint(value: &str) -> &'static str {
    if value.is_empty() {
        " (Contrail reads an empty value as `true`; this daemon does not guess)"
    } else if value.contains('#') || value.contains(';') {
        " (comments must be on a line of their own)"
    } else {
        ""
    }
}

/// `" in [DEFAULT]"` when a suggestion lives in another section than the one written.
fn in_section(written: &str, suggested: &str) -> String {
    if written == suggested {
        String::new()
    } else {
        format!(" in [{suggested}]")
    }
}

/// A key in the schema that an unknown key resembles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suggestion {
    /// Section of the suggested key.
    pub section: &'static str,
    /// The suggested key.
    pub key: &'static str,
}

/// Something in the file the daemon ignores; returned by [`validate`] for the daemon to
/// log. Not fatal: real Contrail files carry keys for other subsystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the ignored key or section is.
    pub at: Location,
    /// The section name as written.
    pub section: String,
    /// What is ignored.
    pub kind: WarningKind,
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// A key the schema does not list in a section it knows.
    UnknownKey {
        /// The key as written.
        key: String,
        /// The value as written.
        value: String,
        /// A known key it resembles, if any.
        suggestion: Option<Suggestion>,
    },
    /// A section the schema does not know; all its keys are ignored. Reported once.
    UnknownSection {
        /// A known section it resembles, if any.
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { at, section, kind } = self;
        match kind {
            WarningKind::UnknownKey {
                key,
                value,
                suggestion,
            } => {
                write!(
                    f,
                    "{at}: [{section}] {key} = {value:?}: unknown key, ignored"
                )?;
                if let Some(s) = suggestion {
                    write!(
                        f,
                        " (did you mean `{}`{}?)",
                        s.key,
                        in_section(section, s.section)
                    )?;
                }
                Ok(())
            }
            WarningKind::UnknownSection { suggestion } => {
                write!(
                    f,
                    "{at}: [{section}]: unknown section, its keys are ignored"
                )?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean [{s}]?)")?;
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------

/// How a key's value is checked by [`validate`] and documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Exactly `true` or `false`.
    Bool,
    /// A decimal whole number in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Any text, including empty.
    Str,
    /// A non-empty file path. Use [`KeyKind::Str`] where an empty value has a meaning.
    Path,
    /// A space-separated list of words (possibly empty).
    List,
    /// A space-separated list of `ip[:port]` (`[v6]:port` for IPv6 with a port).
    Endpoints {
        /// Port used for entries without one.
        default_port: u16,
    },
}

impl KeyKind {
    /// A TCP/UDP port; 0 is allowed (tests bind port 0, and some daemons read 0 as "off").
    pub const PORT: Self = Self::Int {
        min: 0,
        max: u16::MAX as u64,
    };
    /// Any `u32`.
    pub const U32: Self = Self::Int {
        min: 0,
        max: u32::MAX as u64,
    };
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool => f.write_str("boolean (`true` or `false`)"),
            Self::Int { min, max } => write!(f, "integer ({min} to {max})"),
            Self::Str => f.write_str("string"),
            Self::Path => f.write_str("file path"),
            Self::List => f.write_str("space-separated list"),
            Self::Endpoints { default_port } => write!(
                f,
                "space-separated list of `ip[:port]` (default port {default_port})"
            ),
        }
    }
}

/// One key a daemon reads. Meant to be written as `const` data so that documentation and
/// sample files can be generated by iterating over the [`Schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Key name, as written in the file (case-sensitive).
    pub name: &'static str,
    /// What values are valid.
    pub kind: KeyKind,
    /// Whether a misspelling or misplacement of this key must stop the daemon (keys that
    /// turn protection on, or point at the credentials it uses).
    pub security: bool,
    /// One or two sentences for the generated documentation.
    pub doc: &'static str,
    /// The value used when the key is absent, as it would be written in the file; `None`
    /// when the default is computed at run time (host name, addresses) or there is none.
    pub default: Option<&'static str>,
}

impl KeySpec {
    /// A non-security key without a default.
    pub const fn new(name: &'static str, kind: KeyKind, doc: &'static str) -> Self {
        Self {
            name,
            kind,
            security: false,
            doc,
            default: None,
        }
    }

    /// Marks the key as security-relevant (see [`KeySpec::security`]).
    #[must_use]
    pub const fn security(mut self) -> Self {
        self.security = true;
        self
    }

    /// Sets the documented default value.
    #[must_use]
    pub const fn with_default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }
}

/// One `[SECTION]` a daemon reads, with its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionSpec {
    /// Section name, as written between the brackets (case-sensitive).
    pub name: &'static str,
    /// Its keys.
    pub keys: &'static [KeySpec],
}

impl SectionSpec {
    /// A section and its keys.
    pub const fn new(name: &'static str, keys: &'static [KeySpec]) -> Self {
        Self { name, keys }
    }

    /// The key called `name`, if this section has it.
    pub fn key(&self, name: &str) -> Option<&'static KeySpec> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// Every section and key one daemon reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The sections, in documentation order.
    pub sections: &'static [SectionSpec],
}

impl Schema {
    /// A schema over `sections`.
    pub const fn new(sections: &'static [SectionSpec]) -> Self {
        Self { sections }
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&'static SectionSpec> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The key `key` of section `section`.
    pub fn key(&self, section: &str, key: &str) -> Option<&'static KeySpec> {
        self.section(section).and_then(|s| s.key(key))
    }

    /// Every key with its section, in documentation order.
    pub fn keys(&self) -> impl Iterator<Item = (&'static SectionSpec, &'static KeySpec)> {
        let sections: &'static [SectionSpec] = self.sections;
        sections
            .iter()
            .flat_map(|s| s.keys.iter().map(move |k| (s, k)))
    }

    /// Checks that every documented default is a valid value of its key's kind; meant for
    /// each daemon's unit tests, so a wrong default fails CI rather than a deployment.
    pub fn check_defaults(&self) -> Result<(), ConfigError> {
        for (section, key) in self.keys() {
            if let Some(value) = key.default {
                let setting = Setting {
                    section: section.name,
                    key: key.name,
                    value,
                    at: Location::BuiltInDefault,
                };
                setting.check(key.kind)?;
            }
        }
        Ok(())
    }

    /// The best match for an unknown `key` written in `section` among keys passing `keep`.
    fn closest(
        &self,
        section: &str,
        key: &str,
        keep: impl Fn(&KeySpec) -> bool,
    ) -> Option<Suggestion> {
        self.keys()
            .filter(|(_, k)| keep(k))
            .filter_map(|(s, k)| {
                let score = closeness(key, k.name)?;
                // Prefer a key of the section the operator wrote in on equal scores.
                Some((score * 2 + usize::from(s.name != section), s, k))
            })
            .min_by_key(|(score, _, _)| *score)
            .map(|(_, s, k)| Suggestion {
                section: s.name,
                key: k.name,
            })
    }
}

// ---------------------------------------------------------------------------------------
// Near-miss detection
// ---------------------------------------------------------------------------------------

/// Case-folded, with `-` read as `_`: how operators most often mistype a key.
fn normalize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// How close an unknown key is to a known one, lower is closer; `None` when not close.
///
/// Close means, after [`normalize`]: equal; or within Damerau (optimal string alignment)
/// distance 2 (1 for names under 6 characters, where 2 edits reach unrelated words); or one
/// extends the other at the start or end (`xmpp_auth_enabled`, `auth_enable`) with at
/// least 6 characters in common.
fn closeness(unknown: &str, known: &str) -> Option<usize> {
    let a = normalize(unknown);
    let b = normalize(known);
    if a == b {
        return Some(0);
    }
    let max = if b.chars().count() < 6 { 1 } else { 2 };
    if let Some(d) = osa_distance_within(&a, &b, max) {
        return Some(d);
    }
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    if short.chars().count() >= 6
        && (long.starts_with(short.as_str()) || long.ends_with(short.as_str()))
    {
        return Some(max + 1);
    }
    None
}

/// Optimal-string-alignment distance between `a` and `b` if it is at most `max`.
fn osa_distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Cheap reject first: it also bounds the table below by the schema key's length, so a
    // megabyte-long key in the file costs nothing.
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    // All indices below are within `(a.len() + 1) * width` by construction of the loops.
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = v;
        }
    }
    let distance = d[a.len() * width + b.len()];
    (distance <= max).then_some(distance)
}

// ---------------------------------------------------------------------------------------
// Parsed file
// ---------------------------------------------------------------------------------------

/// Where a stored value came from, without the file path (kept once in [`Ini`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Line(usize),
    CommandLine,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: String,
    source: Source,
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    /// The first `[name]` header, if the section had one (not so for keys before any
    /// header, nor for overrides).
    header: Option<Source>,
    entries: Vec<Entry>,
    by_key: HashMap<String, usize>,
}

/// One set of sections: the file, or the command-line overrides. Indexed by name so that
/// duplicate detection stays linear on large inputs.
#[derive(Debug, Clone, Default)]
struct Layer {
    sections: Vec<Section>,
    by_name: HashMap<String, usize>,
}

impl Layer {
    fn section_mut(&mut self, name: &str, header: Option<Source>) -> &mut Section {
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => {
                self.sections.push(Section {
                    name: name.to_owned(),
                    header,
                    entries: Vec::new(),
                    by_key: HashMap::new(),
                });
                let index = self.sections.len() - 1;
                self.by_name.insert(name.to_owned(), index);
                index
            }
        };
        // In bounds: `by_name` only holds indices of pushed sections.
        &mut self.sections[index]
    }

    /// Stores `key=value`; on a duplicate, returns where the key was first set.
    fn insert(
        &mut self,
        section: &str,
        key: &str,
        value: &str,
        source: Source,
    ) -> Result<(), Source> {
        let section = self.section_mut(section, None);
        if let Some(first) = section
            .by_key
            .get(key)
            .and_then(|&i| section.entries.get(i))
        {
            return Err(first.source);
        }
        section.by_key.insert(key.to_owned(), section.entries.len());
        section.entries.push(Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        });
        Ok(())
    }

    fn find(&self, section: &str, key: &str) -> Option<(&Section, &Entry)> {
        let section = self.sections.get(*self.by_name.get(section)?)?;
        let entry = section.entries.get(*section.by_key.get(key)?)?;
        Some((section, entry))
    }
}

/// A parsed configuration file plus command-line overrides.
#[derive(Debug, Clone)]
pub struct Ini {
    origin: PathBuf,
    file: Layer,
    overrides: Layer,
}

/// One `key=value` with its section and where it came from; the typed accessors are on
/// it so that every error can cite the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<'a> {
    /// Section name.
    pub section: &'a str,
    /// Key name.
    pub key: &'a str,
    /// Value, trimmed, otherwise as written.
    pub value: &'a str,
    /// Where it was set.
    pub at: Location,
}

/// A parsed `--SECTION.key=value` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override<'a> {
    /// Section name.
    pub section: &'a str,
    /// Key name.
    pub key: &'a str,
    /// Value (trimmed).
    pub value: &'a str,
}

/// Parses `SECTION.key=value`, with or without a leading `--`. The section is everything
/// before the first `.` (Contrail section names contain `-` but never `.`); the value is
/// everything after the first `=`. Booleans need an explicit `=true`: a bare flag is
/// rejected rather than read as `true`.
pub fn parse_override(arg: &str) -> Result<Override<'_>, ConfigError> {
    let bad = |reason| ConfigError::BadOverride {
        arg: arg.to_owned(),
        reason,
    };
    let body = arg.strip_prefix("--").unwrap_or(arg);
    let (name, value) = body
        .split_once('=')
        .ok_or_else(|| bad("missing `=value` (booleans need an explicit `=true` or `=false`)"))?;
    let (section, key) = name
        .split_once('.')
        .ok_or_else(|| bad("missing `.` between section and key"))?;
    check_override_names(section, key).map_err(bad)?;
    Ok(Override {
        section,
        key,
        value: value.trim(),
    })
}

fn check_override_names(section: &str, key: &str) -> Result<(), &'static str> {
    if section.is_empty() {
        return Err("empty section name");
    }
    if section.contains(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '.') {
        return Err("section name contains whitespace, `.` or a bracket");
    }
    if key.is_empty() {
        return Err("empty key");
    }
    if key.contains(|c: char| c.is_whitespace() || c == '=') {
        return Err("key contains whitespace or `=`");
    }
    Ok(())
}

/// `line` shortened for quoting in an error message.
fn quote_line(line: &str) -> String {
    if line.chars().count() <= MAX_QUOTED_CHARS {
        line.to_owned()
    } else {
        let mut short: String = line.chars().take(MAX_QUOTED_CHARS).collect();
        short.push('…');
        short
    }
}

/// The name inside `[ ... ]`, given the text after the opening bracket.
fn parse_header(rest: &str) -> Result<&str, &'static str> {
    let Some(inner) = rest.strip_suffix(']') else {
        return Err(if rest.contains(']') {
            "text after the closing `]` (comments must be on a line of their own)"
        } else {
            "section header is missing its closing `]`"
        });
    };
    let name = inner.trim();
    if name.is_empty() {
        return Err("empty section name");
    }
    if name.contains(['[', ']']) {
        return Err("section name contains a bracket");
    }
    Ok(name)
}

impl Ini {
    /// An empty configuration, for a daemon started without a file; `origin` is what
    /// errors would name.
    pub fn empty(origin: impl AsRef<Path>) -> Self {
        Self {
            origin: origin.as_ref().to_owned(),
            file: Layer::default(),
            overrides: Layer::default(),
        }
    }

    /// Reads and parses the file at `path`. This is blocking I/O: call it at startup,
    /// before the runtime, or from `spawn_blocking`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_FILE_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let newlines = e
                .as_bytes()
                .get(..valid)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
            ConfigError::NotUtf8 {
                path: path.to_owned(),
                line: newlines + 1,
            }
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `origin` is the file name errors cite.
    pub fn parse(text: &str, origin: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let mut ini = Self::empty(origin);
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut section = DEFAULT_SECTION.to_owned();
        // `lines` strips `\n` and `\r\n`; `trim` takes any stray `\r`.
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let syntax = |reason| ConfigError::Syntax {
                at: ini.location(Source::Line(number)),
                text: quote_line(line),
                reason,
            };
            if let Some(rest) = line.strip_prefix('[') {
                let name = parse_header(rest).map_err(syntax)?;
                ini.file.section_mut(name, Some(Source::Line(number)));
                name.clone_into(&mut section);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(syntax(
                    "expected `[SECTION]`, `key=value`, or a comment starting with `#` or `;`",
                ));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(syntax("missing key before `=`"));
            }
            if key.contains(char::is_whitespace) {
                return Err(syntax("key contains whitespace"));
            }
            let value = value.trim();
            if let Err(first) = ini.file.insert(&section, key, value, Source::Line(number)) {
                return Err(ConfigError::DuplicateKey {
                    site: Box::new(Site {
                        at: ini.location(Source::Line(number)),
                        section,
                        key: key.to_owned(),
                        value: value.to_owned(),
                    }),
                    first: ini.location(first),
                });
            }
        }
        Ok(ini)
    }

    /// The file name errors cite.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    fn location(&self, source: Source) -> Location {
        match source {
            Source::Line(line) => Location::File {
                path: self.origin.clone(),
                line,
            },
            Source::CommandLine => Location::CommandLine,
        }
    }

    /// Sets `section.key` from the command line; it takes precedence over the file.
    /// Setting the same key twice on the command line is an error, as in the file.
    pub fn set_override(
        &mut self,
        section: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ConfigError> {
        check_override_names(section, key).map_err(|reason| ConfigError::BadOverride {
            arg: format!("{section}.{key}={value}"),
            reason,
        })?;
        self.overrides
            .insert(section, key, value, Source::CommandLine)
            .map_err(|first| ConfigError::DuplicateKey {
                site: Box::new(Site {
                    at: Location::CommandLine,
                    section: section.to_owned(),
                    key: key.to_owned(),
                    value: value.to_owned(),
                }),
                first: self.location(first),
            })
    }

    /// [`parse_override`] then [`Ini::set_override`]: `--DEFAULT.xmpp_auth_enable=true`.
    pub fn set_override_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let o = parse_override(arg)?;
        self.set_override(o.section, o.key, o.value)
    }

    fn setting<'a>(&'a self, section: &'a Section, entry: &'a Entry) -> Setting<'a> {
        Setting {
            section: &section.name,
            key: &entry.key,
            value: &entry.value,
            at: self.location(entry.source),
        }
    }

    /// The effective setting of `section.key`: the override if any, else the file's.
    pub fn get(&self, section: &str, key: &str) -> Option<Setting<'_>> {
        self.overrides
            .find(section, key)
            .or_else(|| self.file.find(section, key))
            .map(|(s, e)| self.setting(s, e))
    }

    /// Whether `section.key` is set at all.
    pub fn contains(&self, section: &str, key: &str) -> bool {
        self.get(section, key).is_some()
    }

    /// Every stored setting, the file's in file order and then the overrides, including
    /// file values an override shadows (so [`validate`] can reject those too).
    pub fn settings(&self) -> impl Iterator<Item = Setting<'_>> {
        [&self.file, &self.overrides]
            .into_iter()
            .flat_map(move |layer| {
                layer
                    .sections
                    .iter()
                    .flat_map(move |s| s.entries.iter().map(move |e| self.setting(s, e)))
            })
    }

    /// The value as written.
    pub fn get_str(&self, section: &str, key: &str) -> Result<Option<&str>, ConfigError> {
        Ok(self.get(section, key).map(|s| s.value))
    }

    /// The value as written, or `default` when absent.
    pub fn get_str_or<'a>(
        &'a self,
        section: &str,
        key: &str,
        default: &'a str,
    ) -> Result<&'a str, ConfigError> {
        Ok(self.get_str(section, key)?.unwrap_or(default))
    }

    /// A strict boolean: exactly `true` or `false`.
    pub fn get_bool(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(section, key).map(|s| s.as_bool()).transpose()
    }

    /// A strict boolean, or `default` when absent.
    pub fn get_bool_or(
        &self,
        section: &str,
        key: &str,
        default: bool,
    ) -> Result<bool, ConfigError> {
        Ok(self.get_bool(section, key)?.unwrap_or(default))
    }

    fn get_uint<T: TryFrom<u64>>(
        &self,
        section: &str,
        key: &str,
        max: u64,
    ) -> Result<Option<T>, ConfigError> {
        let Some(setting) = self.get(section, key) else {
            return Ok(None);
        };
        let n = setting.as_uint(0, max)?;
        T::try_from(n)
            .map(Some)
            .map_err(|_| setting.invalid_int(0, max))
    }

    /// A decimal number from 0 to 65535.
    pub fn get_u16(&self, section: &str, key: &str) -> Result<Option<u16>, ConfigError> {
        self.get_uint(section, key, u16::MAX.into())
    }

    /// A decimal number from 0 to 65535, or `default` when absent.
    pub fn get_u16_or(&self, section: &str, key: &str, default: u16) -> Result<u16, ConfigError> {
        Ok(self.get_u16(section, key)?.unwrap_or(default))
    }

    /// A decimal number from 0 to 4294967295.
    pub fn get_u32(&self, section: &str, key: &str) -> Result<Option<u32>, ConfigError> {
        self.get_uint(section, key, u32::MAX.into())
    }

    /// A decimal number from 0 to 4294967295, or `default` when absent.
    pub fn get_u32_or(&self, section: &str, key: &str, default: u32) -> Result<u32, ConfigError> {
        Ok(self.get_u32(section, key)?.unwrap_or(default))
    }

    /// A decimal number that fits a `u64`.
    pub fn get_u64(&self, section: &str, key: &str) -> Result<Option<u64>, ConfigError> {
        self.get_uint(section, key, u64::MAX)
    }

    /// A decimal number that fits a `u64`, or `default` when absent.
    pub fn get_u64_or(&self, section: &str, key: &str, default: u64) -> Result<u64, ConfigError> {
        Ok(self.get_u64(section, key)?.unwrap_or(default))
    }

    /// A non-empty path.
    pub fn get_path(&self, section: &str, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        self.get(section, key).map(|s| s.as_path()).transpose()
    }

    /// A non-empty path, or `default` when absent.
    pub fn get_path_or(
        &self,
        section: &str,
        key: &str,
        default: &Path,
    ) -> Result<PathBuf, ConfigError> {
        Ok(self
            .get_path(section, key)?
            .unwrap_or_else(|| default.to_owned()))
    }

    /// The whitespace-separated words of the value.
    pub fn get_list(&self, section: &str, key: &str) -> Result<Option<Vec<&str>>, ConfigError> {
        Ok(self
            .get(section, key)
            .map(|s| s.value.split_whitespace().collect()))
    }

    /// A whitespace-separated `ip[:port]` list such as `[CONTROL-NODE] servers`; entries
    /// without a port get `default_port`.
    pub fn get_endpoints(
        &self,
        section: &str,
        key: &str,
        default_port: u16,
    ) -> Result<Option<Vec<SocketAddr>>, ConfigError> {
        self.get(section, key)
            .map(|s| s.as_endpoints(default_port))
            .transpose()
    }

    /// Any [`FromStr`] type (an [`IpAddr`], say); `expected` describes it in the error.
    pub fn get_parsed<T: FromStr>(
        &self,
        section: &str,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.get(section, key)
            .map(|s| s.as_parsed(expected))
            .transpose()
    }
}

impl Setting<'_> {
    /// An owned copy, for an error.
    pub fn site(&self) -> Box<Site> {
        Box::new(Site {
            at: self.at.clone(),
            section: self.section.to_owned(),
            key: self.key.to_owned(),
            value: self.value.to_owned(),
        })
    }

    fn invalid_value(&self, expected: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            site: self.site(),
            expected: expected.into(),
        }
    }

    fn invalid_int(&self, min: u64, max: u64) -> ConfigError {
        ConfigError::InvalidInt {
            site: self.site(),
            min,
            max,
        }
    }

    /// Exactly `true` or `false`; anything else (`True`, `yes`, `1`, empty) is an error.
    pub fn as_bool(&self) -> Result<bool, ConfigError> {
        match self.value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ConfigError::InvalidBool { site: self.site() }),
        }
    }

    /// Plain decimal digits (no sign, no hex) in `min..=max`.
    pub fn as_uint(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        let digits = !self.value.is_empty() && self.value.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| self.value.parse::<u64>().ok())
            .flatten()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.invalid_int(min, max))
    }

    /// A non-empty path.
    pub fn as_path(&self) -> Result<PathBuf, ConfigError> {
        if self.value.is_empty() {
            return Err(self.invalid_value("a file path, not an empty value"));
        }
        Ok(PathBuf::from(self.value))
    }

    /// Whitespace-separated `ip[:port]` entries (`[v6]:port` for IPv6 with a port).
    pub fn as_endpoints(&self, default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
        self.value
            .split_whitespace()
            .map(|word| {
                let addr = SocketAddr::from_str(word)
                    .ok()
                    .or_else(|| {
                        IpAddr::from_str(word)
                            .ok()
                            .map(|ip| SocketAddr::new(ip, default_port))
                    })
                    .ok_or_else(|| {
                        self.invalid_value(format!(
                            "space-separated `ip[:port]` entries, and `{word}` is not one"
                        ))
                    })?;
                if addr.port() == 0 {
                    return Err(self.invalid_value(format!("a non-zero port in `{word}`")));
                }
                Ok(addr)
            })
            .collect()
    }

    /// Any [`FromStr`] type; `expected` describes it in the error.
    pub fn as_parsed<T: FromStr>(&self, expected: &str) -> Result<T, ConfigError> {
        self.value.parse().map_err(|_| self.invalid_value(expected))
    }

    /// Checks the value against `kind`, as [`validate`] does for every known key.
    pub fn check(&self, kind: KeyKind) -> Result<(), ConfigError> {
        match kind {
            KeyKind::Bool => self.as_bool().map(drop),
            KeyKind::Int { min, max } => self.as_uint(min, max).map(drop),
            KeyKind::Str | KeyKind::List => Ok(()),
            KeyKind::Path => self.as_path().map(drop),
            KeyKind::Endpoints { default_port } => self.as_endpoints(default_port).map(drop),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Checks `ini` against the daemon's `schema`, at startup.
///
/// * A known key whose value is not of its kind: error (even if an override shadows it).
/// * A security key under a section where the schema does not have it: error.
/// * An unknown key close to a security key (see [`KeySpec::security`]): error with a
///   "did you mean" hint.
/// * Any other unknown key in a known section: warning, with a hint when one fits.
/// * An unknown section: one warning for the whole section.
///
/// The first error in file order (then override order) is returned.
pub fn validate(ini: &Ini, schema: &Schema) -> Result<Vec<Warning>, ConfigError> {
    let mut warnings = Vec::new();
    let mut warned_sections = HashSet::new();
    for layer in [&ini.file, &ini.overrides] {
        for section in &layer.sections {
            let known_section = schema.section(&section.name).is_some();
            if !known_section && warned_sections.insert(section.name.as_str()) {
                let at = section
                    .header
                    .or_else(|| section.entries.first().map(|e| e.source));
                // An empty section with no header cannot be stored; `CommandLine` is a
                // harmless fallback, not a reachable case.
                warnings.push(Warning {
                    at: ini.location(at.unwrap_or(Source::CommandLine)),
                    section: section.name.clone(),
                    kind: WarningKind::UnknownSection {
                        suggestion: closest_section(schema, &section.name),
                    },
                });
            }
            for entry in &section.entries {
                let setting = ini.setting(section, entry);
                if let Some(spec) = schema.key(setting.section, setting.key) {
                    setting.check(spec.kind)?;
                    continue;
                }
                check_unknown_key(schema, &setting)?;
                if known_section {
                    warnings.push(Warning {
                        at: setting.at.clone(),
                        section: section.name.clone(),
                        kind: WarningKind::UnknownKey {
                            key: entry.key.clone(),
                            value: entry.value.clone(),
                            suggestion: schema.closest(setting.section, setting.key, |_| true),
                        },
                    });
                }
            }
        }
    }
    Ok(warnings)
}

/// Rejects an unknown key that is, or looks like, a security key.
fn check_unknown_key(schema: &Schema, setting: &Setting<'_>) -> Result<(), ConfigError> {
    if let Some((section, _)) = schema
        .keys()
        .find(|(_, k)| k.security && k.name == setting.key)
    {
        return Err(ConfigError::MisplacedSecurityKey {
            site: setting.site(),
            expected_section: section.name,
        });
    }
    if let Some(s) = schema.closest(setting.section, setting.key, |k| k.security) {
        return Err(ConfigError::UnknownSecurityKey {
            site: setting.site(),
            suggestion: s,
        });
    }
    Ok(())
}

fn closest_section(schema: &Schema, name: &str) -> Option<&'static str> {
    schema
        .sections
        .iter()
        .filter_map(|s| closeness(name, s.name).map(|score| (score, s.name)))
        .min_by_key(|(score, _)| *score)
        .map(|(_, name)| name)
}

/// Collects command-line overrides: `--set SECTION.key=value` values and Contrail's dotted
/// form `--SECTION.key=value` (passed through as trailing arguments). Anything else in the
/// trailing arguments is an error message for the caller to print.
pub fn collect_overrides(set: &[String], dotted: &[String]) -> Result<Vec<String>, String> {
    let mut out = set.to_vec();
    for d in dotted {
        match d.strip_prefix("--") {
            Some(o) => out.push(o.to_owned()),
            None => {
                return Err(format!(
                    "unexpected argument {d:?} (overrides look like --SECTION.key=value)"
                ));
            }
        }
    }
    Ok(out)
}

/// Maps Contrail's sandesh log levels onto `tracing` filters; anything else is passed
/// through (so `debug` or `control_node=trace` work too).
pub fn log_filter(level: &str) -> String {
    match level {
        "SYS_EMERG" | "SYS_ALERT" | "SYS_CRIT" | "SYS_ERR" => "error",
        "SYS_WARN" => "warn",
        "SYS_NOTICE" | "SYS_INFO" => "info",
        "SYS_DEBUG" => "debug",
        other => other,
    }
    .to_owned()
}

/// The machine's host name, as `gethostname()` gives it (read from the kernel).
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: Schema = Schema::new(&[SectionSpec::new(
        "DEFAULT",
        &[
            KeySpec::new("hostip", KeyKind::Str, "XMPP listen address."),
            KeySpec::new("hostname", KeyKind::Str, "Name in stream responses."),
            KeySpec::new("xmpp_server_port", KeyKind::PORT, "XMPP listen port.")
                .with_default("5269"),
            KeySpec::new("xmpp_auth_enable", KeyKind::Bool, "Require STARTTLS.")
                .security()
                .with_default("false"),
            KeySpec::new(
                "xmpp_server_cert",
                KeyKind::Path,
                "Server certificate (PEM).",
            )
            .security()
            .with_default("/etc/contrail/ssl/certs/server.pem"),
            KeySpec::new("xmpp_server_key", KeyKind::Path, "Server key (PEM).")
                .security()
                .with_default("/etc/contrail/ssl/private/server-privkey.pem"),
            KeySpec::new(
                "xmpp_ca_cert",
                KeyKind::Str,
                "CA bundle; empty: no peer check.",
            )
            .security()
            .with_default("/etc/contrail/ssl/certs/ca-cert.pem"),
            KeySpec::new(
                "tcp_hold_time",
                KeyKind::Int { min: 1, max: 65535 },
                "TCP keepalive.",
            )
            .with_default("30"),
            KeySpec::new("gr_helper_xmpp_disable", KeyKind::Bool, "No GR helper.")
                .with_default("false"),
            KeySpec::new("test_mode", KeyKind::Bool, "Test introspect.").with_default("false"),
            KeySpec::new("http_server_port", KeyKind::PORT, "Introspect port.")
                .with_default("8083"),
        ],
    )]);

    const AGENT: Schema = Schema::new(&[
        SectionSpec::new(
            "DEFAULT",
            &[
                KeySpec::new("hostname", KeyKind::Str, "XMPP identity."),
                KeySpec::new("agent_name", KeyKind::Str, "Unused by XMPP."),
                KeySpec::new("xmpp_auth_enable", KeyKind::Bool, "TLS to control.")
                    .security()
                    .with_default("false"),
                KeySpec::new("xmpp_dns_auth_enable", KeyKind::Bool, "TLS to dns.")
                    .security()
                    .with_default("false"),
                KeySpec::new("xmpp_server_cert", KeyKind::Path, "Own certificate.")
                    .security()
                    .with_default("/etc/contrail/ssl/certs/server.pem"),
                KeySpec::new("http_server_port", KeyKind::PORT, "Introspect port.")
                    .with_default("8085"),
            ],
        ),
        SectionSpec::new(
            "CONTROL-NODE",
            &[
                KeySpec::new(
                    "servers",
                    KeyKind::Endpoints { default_port: 5269 },
                    "Control nodes.",
                ),
                KeySpec::new("subcluster_name", KeyKind::Str, "Stream xmlns."),
            ],
        ),
        SectionSpec::new(
            "DNS",
            &[KeySpec::new(
                "servers",
                KeyKind::Endpoints { default_port: 53 },
                "DNS nodes.",
            )],
        ),
        SectionSpec::new(
            "VIRTUAL-HOST-INTERFACE",
            &[
                KeySpec::new("name", KeyKind::Str, "vhost interface."),
                KeySpec::new("ip", KeyKind::Str, "Source address, with prefix length."),
            ],
        ),
    ]);

    const CONTROL_CONF: &str = "\
#
# Copyright (c) 2014 Juniper Networks, Inc. All rights reserved.
#
# Control-node configuration options
#

[DEFAULT]
# bgp_config_file=bgp_config.xml
# bgp_port=179
collectors=10.0.0.5:8086 10.0.0.6:8086
hostip=10.0.0.1
hostname=ctrl-1
http_server_port=8083
log_file=/var/log/contrail/contrail-control.log
log_level=SYS_NOTICE
log_local=1
xmpp_server_port=5269
xmpp_auth_enable=true
xmpp_server_cert=/etc/contrail/ssl/certs/server.pem
xmpp_server_key=/etc/contrail/ssl/private/server-privkey.pem
xmpp_ca_cert=/etc/contrail/ssl/certs/ca-cert.pem

[CONFIGDB]
config_db_server_list=10.0.0.1:9042
rabbitmq_server_list=10.0.0.1:5672

[SANDESH]
introspect_ssl_enable=False
sandesh_ssl_enable=False
";

    const AGENT_CONF: &str = "\
[CONTROL-NODE]
# IP address and port to be used to connect to control-node.
servers=10.0.0.1:5269 10.0.0.2

[DEFAULT]
agent_name=compute-1
collectors=10.0.0.5:8086
hostname=compute-1
http_server_port=8085
log_file=/var/log/contrail/contrail-vrouter-agent.log
xmpp_auth_enable=true
xmpp_dns_auth_enable=false

[DNS]
servers=10.0.0.1:53 10.0.0.2

[VIRTUAL-HOST-INTERFACE]
name=vhost0
ip=10.1.1.1/24
physical_interface=eth1
compute_node_address=10.1.1.1
";

    fn parse(text: &str) -> Ini {
        Ini::parse(text, "/etc/contrail/test.conf").expect("test input parses")
    }

    fn parse_err(text: &str) -> String {
        match Ini::parse(text, "/etc/contrail/test.conf") {
            Ok(ini) => panic!("expected a parse error, got {ini:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn validate_err(text: &str, schema: &Schema) -> ConfigError {
        match validate(&parse(text), schema) {
            Ok(w) => panic!("expected a validation error, got warnings {w:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_sections_comments_whitespace_and_implicit_default() {
        let ini = parse(
            "\u{feff}top = 1\r\n\
             ; semicolon comment\n\
             \t# hash comment\n\
             \n\
             [ CONTROL-NODE ]\n\
             servers =  10.0.0.1:5269 10.0.0.2  \n\
             url=http://x/?a=b\n\
             empty=\n\
             [DEFAULT]\n\
             later=2\n",
        );
        assert_eq!(ini.get_str("DEFAULT", "top").ok().flatten(), Some("1"));
        assert_eq!(ini.get_str("DEFAULT", "later").ok().flatten(), Some("2"));
        assert_eq!(
            ini.get_str("CONTROL-NODE", "servers").ok().flatten(),
            Some("10.0.0.1:5269 10.0.0.2")
        );
        assert_eq!(
            ini.get_str("CONTROL-NODE", "url").ok().flatten(),
            Some("http://x/?a=b")
        );
        assert_eq!(
            ini.get_str("CONTROL-NODE", "empty").ok().flatten(),
            Some("")
        );
        assert!(!ini.contains("CONTROL-NODE", "top"));
        let at = ini.get("CONTROL-NODE", "servers").map(|s| s.at);
        assert_eq!(
            at,
            Some(Location::File {
                path: "/etc/contrail/test.conf".into(),
                line: 6
            })
        );
        assert_eq!(ini.settings().count(), 5);
    }

    #[test]
    fn realistic_control_conf() -> Result<(), ConfigError> {
        let ini = Ini::parse(CONTROL_CONF, "/etc/contrail/contrail-control.conf")?;
        let warnings = validate(&ini, &CONTROL)?;
        let rendered: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        // collectors, log_file, log_level, log_local + two unknown sections.
        assert_eq!(warnings.len(), 6, "{rendered:#?}");
        assert!(rendered.iter().any(|w| {
            w.starts_with("/etc/contrail/contrail-control.conf:14: [DEFAULT] log_file = ")
        }));
        assert!(
            rendered
                .iter()
                .any(|w| w.contains("[SANDESH]: unknown section"))
        );
        assert!(ini.get_bool_or("DEFAULT", "xmpp_auth_enable", false)?);
        assert_eq!(ini.get_u16_or("DEFAULT", "xmpp_server_port", 1)?, 5269);
        assert_eq!(ini.get_u32_or("DEFAULT", "tcp_hold_time", 30)?, 30);
        assert_eq!(ini.get_str("DEFAULT", "hostname")?, Some("ctrl-1"));
        assert_eq!(
            ini.get_parsed::<IpAddr>("DEFAULT", "hostip", "an IP address")?,
            Some(IpAddr::from([10, 0, 0, 1]))
        );
        assert_eq!(
            ini.get_path("DEFAULT", "xmpp_server_cert")?,
            Some(PathBuf::from("/etc/contrail/ssl/certs/server.pem"))
        );
        Ok(())
    }

    #[test]
    fn realistic_agent_conf() -> Result<(), ConfigError> {
        let ini = Ini::parse(AGENT_CONF, "/etc/contrail/contrail-vrouter-agent.conf")?;
        let warnings = validate(&ini, &AGENT)?;
        let keys: Vec<&str> = warnings
            .iter()
            .filter_map(|w| match &w.kind {
                WarningKind::UnknownKey { key, .. } => Some(key.as_str()),
                WarningKind::UnknownSection { .. } => None,
            })
            .collect();
        assert_eq!(
            keys,
            [
                "collectors",
                "log_file",
                "physical_interface",
                "compute_node_address"
            ]
        );
        assert_eq!(
            ini.get_endpoints("CONTROL-NODE", "servers", 5269)?,
            Some(vec![
                SocketAddr::from(([10, 0, 0, 1], 5269)),
                SocketAddr::from(([10, 0, 0, 2], 5269))
            ])
        );
        assert_eq!(
            ini.get_endpoints("DNS", "servers", 53)?,
            Some(vec![
                SocketAddr::from(([10, 0, 0, 1], 53)),
                SocketAddr::from(([10, 0, 0, 2], 53))
            ])
        );
        assert_eq!(
            ini.get_list("CONTROL-NODE", "servers")?,
            Some(vec!["10.0.0.1:5269", "10.0.0.2"])
        );
        assert_eq!(
            ini.get_str("VIRTUAL-HOST-INTERFACE", "ip")?,
            Some("10.1.1.1/24")
        );
        assert!(ini.get_bool_or("DEFAULT", "xmpp_auth_enable", false)?);
        assert!(!ini.get_bool_or("DEFAULT", "xmpp_dns_auth_enable", true)?);
        assert_eq!(ini.get_bool("DEFAULT", "absent")?, None);
        assert!(ini.get_bool_or("DEFAULT", "absent", true)?);
        Ok(())
    }

    #[test]
    fn strict_booleans_reject_everything_but_true_and_false() {
        for bad in [
            "True",
            "TRUE",
            "yes",
            "1",
            "",
            "on",
            "False",
            "0",
            "true # tls",
        ] {
            let text = format!("[DEFAULT]\nhostname=x\nxmpp_auth_enable={bad}\n");
            let ini = parse(&text);
            let err = match ini.get_bool("DEFAULT", "xmpp_auth_enable") {
                Ok(v) => panic!("{bad:?} accepted as {v:?}"),
                Err(e) => e,
            };
            assert!(matches!(err, ConfigError::InvalidBool { .. }), "{err:?}");
            let msg = err.to_string();
            let expected = format!(
                "/etc/contrail/test.conf:3: [DEFAULT] xmpp_auth_enable = {bad:?}: not a boolean: \
                 use exactly `true` or `false` (the keyword is case-sensitive)"
            );
            assert!(msg.starts_with(&expected), "{msg}");
            // validate rejects it too, not only the getter.
            let err = validate_err(&text, &CONTROL);
            assert!(err.to_string().starts_with(&expected), "{err}");
        }
        let ini = parse("a=true\nb=false\n");
        assert_eq!(ini.get_bool("DEFAULT", "a").ok().flatten(), Some(true));
        assert_eq!(ini.get_bool("DEFAULT", "b").ok().flatten(), Some(false));
        let empty = parse("a=\n")
            .get_bool("DEFAULT", "a")
            .map_err(|e| e.to_string());
        assert!(
            matches!(&empty, Err(m) if m.contains("empty value as `true`")),
            "{empty:?}"
        );
    }

    #[test]
    fn near_miss_of_security_key_is_an_error_with_hint() {
        for typo in [
            "xmpp_auth_enabled",
            "xmpp_auth_enble",
            "XMPP_AUTH_ENABLE",
            "xmpp-auth-enable",
            "xmpp_auht_enable",
            "Xmpp_Auth_Enable",
        ] {
            let err = validate_err(&format!("hostname=x\n{typo}=true\n"), &CONTROL);
            assert!(
                matches!(err, ConfigError::UnknownSecurityKey { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "/etc/contrail/test.conf:2: [DEFAULT] {typo} = \"true\""
                )),
                "{msg}"
            );
            assert!(msg.contains("did you mean `xmpp_auth_enable`?"), "{msg}");
        }
        // The closest security key wins.
        let err = validate_err("xmpp_server_keys=/k.pem\n", &CONTROL);
        assert!(
            err.to_string().contains("did you mean `xmpp_server_key`?"),
            "{err}"
        );
        // A near miss in another section names the right one.
        let err = validate_err("[CONTROL-NODE]\nxmpp_auth_enabled=true\n", &AGENT);
        assert!(
            err.to_string()
                .contains("did you mean `xmpp_auth_enable` in [DEFAULT]?"),
            "{err}"
        );
    }

    #[test]
    fn misplaced_security_key_is_an_error() {
        let err = validate_err(
            "[CONTROL-NODE]\nservers=10.0.0.1\nxmpp_auth_enable=true\n",
            &AGENT,
        );
        assert!(
            matches!(err, ConfigError::MisplacedSecurityKey { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "/etc/contrail/test.conf:3: [CONTROL-NODE] xmpp_auth_enable = \"true\""
            ),
            "{msg}"
        );
        assert!(
            msg.contains("belongs in [DEFAULT], not [CONTROL-NODE]"),
            "{msg}"
        );
        // Also under a section the daemon does not know at all.
        let err = validate_err("[DEFALUT]\nxmpp_auth_enable=true\n", &CONTROL);
        assert!(
            err.to_string()
                .contains("belongs in [DEFAULT], not [DEFALUT]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_non_security_keys_and_sections_are_warnings() -> Result<(), ConfigError> {
        let ini = parse(
            "log_file=/var/log/x.log\n\
             collectors=10.0.0.5:8086\n\
             xmpp_dns_auth_enable=true\n\
             hostnme=x\n\
             [CONTROL_NODE]\n\
             servers=10.0.0.1\n\
             other=1\n",
        );
        let warnings = validate(&ini, &CONTROL)?;
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
        let rendered: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered.first().map(String::as_str),
            Some(
                "/etc/contrail/test.conf:1: [DEFAULT] log_file = \"/var/log/x.log\": unknown key, ignored"
            )
        );
        assert!(
            rendered
                .iter()
                .any(|w| w.contains("hostnme") && w.contains("did you mean `hostname`?"))
        );
        assert!(rendered.iter().any(|w| w.contains("xmpp_dns_auth_enable")));
        // One warning for the unknown section, at its header, not one per key.
        let sections: Vec<&Warning> = warnings
            .iter()
            .filter(|w| matches!(w.kind, WarningKind::UnknownSection { .. }))
            .collect();
        assert_eq!(sections.len(), 1);
        let agent_ini = parse("[CONTROL_NODE]\nservers=10.0.0.1\n");
        let warnings = validate(&agent_ini, &AGENT)?;
        assert_eq!(
            warnings.first().map(ToString::to_string).as_deref(),
            Some(
                "/etc/contrail/test.conf:1: [CONTROL_NODE]: unknown section, its keys are ignored (did you mean [CONTROL-NODE]?)"
            )
        );
        Ok(())
    }

    #[test]
    fn closeness_rules() {
        assert_eq!(closeness("xmpp_auth_enable", "xmpp_auth_enable"), Some(0));
        assert_eq!(closeness("XMPP-AUTH-ENABLE", "xmpp_auth_enable"), Some(0));
        assert_eq!(closeness("xmpp_atuh_enable", "xmpp_auth_enable"), Some(1));
        assert!(closeness("xmpp_auth_enabled_please", "xmpp_auth_enable").is_some());
        assert!(closeness("auth_enable", "xmpp_auth_enable").is_some());
        // Real keys from Contrail files that must stay mere warnings.
        for unrelated in [
            "xmpp_dns_auth_enable",
            "sandesh_ca_cert",
            "introspect_ssl_enable",
            "collectors",
            "log_file",
            "xmpp",
        ] {
            assert_eq!(
                closeness(unrelated, "xmpp_auth_enable"),
                None,
                "{unrelated}"
            );
            assert_eq!(closeness(unrelated, "xmpp_ca_cert"), None, "{unrelated}");
        }
        // Short names get one edit, not two.
        assert_eq!(closeness("ab", "ip"), None);
        assert_eq!(closeness("iq", "ip"), Some(1));
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let msg = parse_err("[DEFAULT]\nhostname=a\n\nhostname=b\n");
        assert_eq!(
            msg,
            "/etc/contrail/test.conf:4: [DEFAULT] hostname = \"b\": set twice: \
             first at /etc/contrail/test.conf:2, again at /etc/contrail/test.conf:4"
        );
        // Across two blocks of the same section, and implicit DEFAULT then `[DEFAULT]`.
        let msg = parse_err("hostname=a\n[DNS]\nservers=x\n[DEFAULT]\nhostname=b\n");
        assert!(msg.contains("first at /etc/contrail/test.conf:1"), "{msg}");
        // Same key in different sections is fine.
        let ini = parse("[CONTROL-NODE]\nservers=a\n[DNS]\nservers=b\n");
        assert_eq!(ini.get_str("DNS", "servers").ok().flatten(), Some("b"));
    }

    #[test]
    fn integers_out_of_range_or_malformed() {
        let ini = parse(
            "port=70000\nneg=-1\nplus=+5\nhex=0x10\nhuge=99999999999999999999999\nok=65535\n",
        );
        let msg = ini.get_u16("DEFAULT", "port").map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("/etc/contrail/test.conf:1: [DEFAULT] port = \"70000\": expected a whole number from 0 to 65535".to_owned())
        );
        assert_eq!(ini.get_u32("DEFAULT", "port").ok().flatten(), Some(70000));
        for key in ["neg", "plus", "hex", "huge"] {
            let err = ini.get_u64("DEFAULT", key);
            assert!(
                matches!(err, Err(ConfigError::InvalidInt { .. })),
                "{key}: {err:?}"
            );
        }
        assert_eq!(ini.get_u16("DEFAULT", "ok").ok().flatten(), Some(u16::MAX));
        assert_eq!(ini.get_u64_or("DEFAULT", "absent", 7).ok(), Some(7));
        // validate uses the schema's range.
        let err = validate_err("tcp_hold_time=0\n", &CONTROL);
        assert!(
            err.to_string()
                .ends_with("expected a whole number from 1 to 65535"),
            "{err}"
        );
        let err = validate_err("xmpp_server_port=5269x\n", &CONTROL);
        assert!(
            err.to_string()
                .starts_with("/etc/contrail/test.conf:1: [DEFAULT] xmpp_server_port = \"5269x\""),
            "{err}"
        );
    }

    #[test]
    fn malformed_lines() {
        for (text, reason) in [
            (
                "[DEFAULT]\njust some text\n",
                "expected `[SECTION]`, `key=value`",
            ),
            ("[DEFAULT\n", "missing its closing `]`"),
            ("[]\n", "empty section name"),
            ("[DEFAULT] # main\n", "text after the closing `]`"),
            ("[a[b]\n", "contains a bracket"),
            ("= value\n", "missing key before `=`"),
            ("host name = x\n", "key contains whitespace"),
        ] {
            let msg = parse_err(text);
            let line = text.lines().count();
            assert!(
                msg.starts_with(&format!("/etc/contrail/test.conf:{line}: malformed line ")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{text:?}: {msg}");
        }
        let long = format!("{}\n", "x".repeat(10_000));
        assert!(parse_err(&long).len() < 400);
    }

    #[test]
    fn overrides_take_precedence_and_cite_the_command_line() -> Result<(), ConfigError> {
        let mut ini = parse("xmpp_auth_enable=false\nxmpp_server_port=5269\n");
        ini.set_override_arg("--DEFAULT.xmpp_auth_enable=true")?;
        ini.set_override("CONTROL-NODE", "servers", "10.0.0.9")?;
        assert!(ini.get_bool_or("DEFAULT", "xmpp_auth_enable", false)?);
        assert_eq!(
            ini.get("DEFAULT", "xmpp_auth_enable").map(|s| s.at),
            Some(Location::CommandLine)
        );
        assert_eq!(ini.get_u16("DEFAULT", "xmpp_server_port")?, Some(5269));
        assert_eq!(ini.get_str("CONTROL-NODE", "servers")?, Some("10.0.0.9"));

        ini.set_override_arg("DEFAULT.xmpp_server_port=99999")?;
        let err = ini
            .get_u16("DEFAULT", "xmpp_server_port")
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("command line: [DEFAULT] xmpp_server_port = \"99999\": expected a whole number from 0 to 65535".to_owned())
        );
        let dup = ini
            .set_override("DEFAULT", "xmpp_auth_enable", "false")
            .map_err(|e| e.to_string());
        assert_eq!(
            dup,
            Err("command line: [DEFAULT] xmpp_auth_enable = \"false\": set twice: first at command line, again at command line".to_owned())
        );

        // validate sees overrides, and the shadowed file value too.
        let mut ini = parse("hostname=x\n");
        ini.set_override_arg("--DEFAULT.xmpp_auth_enable=yes")?;
        let err = validate(&ini, &CONTROL).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.starts_with("command line: [DEFAULT] xmpp_auth_enable = \"yes\": not a boolean")),
            "{err:?}"
        );
        let mut ini = parse("xmpp_auth_enable=True\n");
        ini.set_override_arg("--DEFAULT.xmpp_auth_enable=true")?;
        assert!(validate(&ini, &CONTROL).is_err());
        let mut ini = parse("");
        ini.set_override_arg("--DEFAULT.xmpp_auth_enabled=true")?;
        let err = validate(&ini, &CONTROL).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.starts_with("command line:") && m.contains("did you mean")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn override_argument_syntax() {
        assert_eq!(
            parse_override("--CONTROL-NODE.servers=10.0.0.1:5269 10.0.0.2").ok(),
            Some(Override {
                section: "CONTROL-NODE",
                key: "servers",
                value: "10.0.0.1:5269 10.0.0.2"
            })
        );
        assert_eq!(
            parse_override("DEFAULT.k=a=b").ok().map(|o| o.value),
            Some("a=b")
        );
        for (arg, reason) in [
            ("--DEFAULT.xmpp_auth_enable", "missing `=value`"),
            ("--xmpp_auth_enable=true", "missing `.`"),
            ("--.key=1", "empty section name"),
            ("--DEFAULT.=1", "empty key"),
            ("--DEF AULT.k=1", "section name contains"),
            ("--DEFAULT.k k=1", "key contains"),
        ] {
            let msg = parse_override(arg).map(|_| ()).map_err(|e| e.to_string());
            assert!(
                matches!(&msg, Err(m) if m.starts_with("command line:") && m.contains(reason)),
                "{arg}: {msg:?}"
            );
        }
    }

    #[test]
    fn paths_endpoints_and_parsed_values() {
        let ini = parse(
            "cert=\n\
             servers=10.0.0.1:5269 [::1]:5270 ::2 bogus\n\
             zero=10.0.0.1:0\n\
             v6=fe80::1\n\
             ip=10.0.0.256\n",
        );
        let err = ini.get_path("DEFAULT", "cert").map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("/etc/contrail/test.conf:1: [DEFAULT] cert = \"\": expected a file path, not an empty value".to_owned())
        );
        assert_eq!(
            ini.get_path_or("DEFAULT", "absent", Path::new("/d.pem"))
                .ok(),
            Some(PathBuf::from("/d.pem"))
        );
        let err = ini
            .get_endpoints("DEFAULT", "servers", 5269)
            .map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.contains("`bogus` is not one")),
            "{err:?}"
        );
        let err = ini.get_endpoints("DEFAULT", "zero", 5269);
        assert!(
            matches!(err, Err(ConfigError::InvalidValue { .. })),
            "{err:?}"
        );
        let v6 = ini.get_endpoints("DEFAULT", "v6", 53).ok().flatten();
        assert_eq!(
            v6.map(|v| v.iter().map(SocketAddr::port).collect::<Vec<_>>()),
            Some(vec![53])
        );
        let err = ini
            .get_parsed::<IpAddr>("DEFAULT", "ip", "an IP address")
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err(
                "/etc/contrail/test.conf:5: [DEFAULT] ip = \"10.0.0.256\": expected an IP address"
                    .to_owned()
            )
        );
    }

    #[test]
    fn load_reads_files_and_names_them_in_errors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("xmpp-core-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let good = dir.join("contrail-control.conf");
        std::fs::write(&good, CONTROL_CONF)?;
        let ini = Ini::load(&good)?;
        assert_eq!(ini.origin(), good.as_path());
        assert!(validate(&ini, &CONTROL).is_ok());

        let missing = dir.join("missing.conf");
        let msg = Ini::load(&missing).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            matches!(&msg, Err(m) if m.starts_with(&format!("{}: cannot read configuration file: ", missing.display()))),
            "{msg:?}"
        );

        let latin1 = dir.join("latin1.conf");
        std::fs::write(&latin1, b"[DEFAULT]\nhostname=caf\xe9\n")?;
        let err = Ini::load(&latin1).map(|_| ());
        assert!(
            matches!(err, Err(ConfigError::NotUtf8 { line: 2, .. })),
            "{err:?}"
        );

        let big = dir.join("big.conf");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES + 1])?;
        assert!(matches!(Ini::load(&big), Err(ConfigError::TooLarge { .. })));

        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn schema_defaults_are_checked_and_iterable() {
        assert!(CONTROL.check_defaults().is_ok());
        assert!(AGENT.check_defaults().is_ok());
        assert_eq!(CONTROL.keys().count(), 11);
        assert_eq!(AGENT.keys().filter(|(_, k)| k.security).count(), 3);
        const BAD: Schema = Schema::new(&[SectionSpec::new(
            "DEFAULT",
            &[KeySpec::new("flag", KeyKind::Bool, "A flag.").with_default("yes")],
        )]);
        let msg = BAD.check_defaults().map_err(|e| e.to_string());
        assert!(
            matches!(&msg, Err(m) if m.starts_with("built-in default: [DEFAULT] flag = \"yes\": not a boolean")),
            "{msg:?}"
        );
        assert_eq!(KeyKind::PORT.to_string(), "integer (0 to 65535)");
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A small deterministic generator over characters that matter to the parser.
        let alphabet: Vec<char> = "[]=#; \t\r\n.-_aXé\u{feff}0:".chars().collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(state % 64) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let index = usize::try_from(state % alphabet.len() as u64).unwrap_or(0);
                text.push(alphabet.get(index).copied().unwrap_or('x'));
            }
            state = state.wrapping_add(1);
            if let Ok(mut ini) = Ini::parse(&text, "fuzz.conf") {
                let _ = validate(&ini, &AGENT);
                let _ = validate(&ini, &CONTROL);
                let _ = ini.set_override_arg(&text);
                let _ = ini.get_endpoints("DEFAULT", "servers", 5269);
            }
            let _ = parse_override(&text);
        }
    }
}
