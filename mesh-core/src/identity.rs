//! SPIFFE workload identities in the one shape Istio uses:
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

use std::fmt;
use std::str::FromStr;

/// The trust domain assumed when a workload record leaves it empty.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The service account assumed when a workload record leaves it empty.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

const SCHEME: &str = "spiffe://";

/// A workload identity. Parsing is strict: a malformed id never becomes a
/// partially-filled identity that could match a policy by accident.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{input:?} is not a SPIFFE id: it must start with \"spiffe://\"")]
    MissingScheme { input: String },
    #[error(
        "{input:?} has {segments} path segments; a workload id is spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    WrongShape { input: String, segments: usize },
    #[error("{input:?}: segment {position} must be {expected:?}, found {found:?}")]
    WrongKeyword {
        input: String,
        position: usize,
        expected: &'static str,
        found: String,
    },
    #[error("{input:?}: the {part} is empty")]
    Empty { input: String, part: &'static str },
    #[error("{input:?}: the {part} {value:?} may only hold {allowed}")]
    BadCharacter {
        input: String,
        part: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl Identity {
    /// Builds an identity from its parts, validating each as parsing would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// Builds the identity of a workload record, applying Istio's defaults for
    /// an empty trust domain or service account.
    pub fn for_workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let td = if trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            trust_domain
        };
        let sa = if service_account.is_empty() {
            DEFAULT_SERVICE_ACCOUNT
        } else {
            service_account
        };
        Self::new(td, namespace, sa)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity as authorization principals are written: without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_string();
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::MissingScheme { input: owned() })?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() != 5 {
            return Err(IdentityError::WrongShape {
                input: owned(),
                segments: segments.len(),
            });
        }
        for (position, expected) in [(1, "ns"), (3, "sa")] {
            if segments[position] != expected {
                return Err(IdentityError::WrongKeyword {
                    input: owned(),
                    position,
                    expected,
                    found: segments[position].to_string(),
                });
            }
        }
        let trust_domain = segments[0];
        check_part(input, "trust domain", trust_domain, true)?;
        check_part(input, "namespace", segments[2], false)?;
        check_part(input, "service account", segments[4], false)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            namespace: segments[2].to_string(),
            service_account: segments[4].to_string(),
        })
    }
}

fn check_part(
    input: &str,
    part: &'static str,
    value: &str,
    trust_domain: bool,
) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::Empty {
            input: input.to_string(),
            part,
        });
    }
    // The SPIFFE character sets: trust domains are lower case; path segments may
    // not be "." or "..", which would let an id alias another after normalisation.
    let (ok, allowed) = if trust_domain {
        (
            value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
            "lower-case letters, digits, '.', '-' and '_'",
        )
    } else {
        (
            value != "."
                && value != ".."
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "letters, digits, '.', '-' and '_' (and is not '.' or '..')",
        )
    };
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadCharacter {
            input: input.to_string(),
            part,
            value: value.to_string(),
            allowed,
        })
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_workload_id() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/server"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "server");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/server"
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/server");
    }

    #[test]
    fn rejects_malformed_ids_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("cluster.local/ns/a/sa/b", "must start with"),
            ("http://cluster.local/ns/a/sa/b", "must start with"),
            ("spiffe://cluster.local/ns/a/sa", "has 4 path segments"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "has 6 path segments"),
            ("spiffe://cluster.local/ns/a/sa/b/", "has 6 path segments"),
            (
                "spiffe://cluster.local/namespace/a/sa/b",
                "segment 1 must be \"ns\"",
            ),
            (
                "spiffe://cluster.local/ns/a/serviceaccount/b",
                "segment 3 must be \"sa\"",
            ),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://cluster.local/ns//sa/b", "namespace is empty"),
            (
                "spiffe://cluster.local/ns/a/sa/",
                "service account is empty",
            ),
            (
                "spiffe://Cluster.Local/ns/a/sa/b",
                "trust domain \"Cluster.Local\"",
            ),
            ("spiffe://cluster.local/ns/../sa/b", "namespace \"..\""),
            ("spiffe://cluster.local/ns/a b/sa/b", "namespace \"a b\""),
            (
                "spiffe://cluster.local/ns/a/sa/b?x=1",
                "service account \"b?x=1\"",
            ),
            ("spiffe://td:8080/ns/a/sa/b", "trust domain \"td:8080\""),
        ];
        for (input, want) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn workload_defaults_fill_empty_parts() {
        let id = Identity::for_workload("", "ns1", "").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/ns1/sa/default");
        assert!(Identity::for_workload("td", "", "sa").is_err());
    }
}
