//! The line of a field in a YAML document, given its path. serde_yaml's values
//! carry no positions, so a refused field is found again by walking the text
//! with a deserializer that follows the path and fails at its end: serde_yaml
//! marks that failure with the position of the value there.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a field path: `rules` or `[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Converts serde_path_to_error's path, skipping steps that are not keys or
/// indexes (enum variants have no text of their own).
pub fn segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            _ => None,
        })
        .collect()
}

const FOUND: &str = "the value at the path is here";

/// The 1-based line, within `text`, of the value at `path`; `None` when the
/// path is not in the text (e.g. it goes through a merge key).
pub fn line_of(text: &str, path: &[Segment]) -> Option<usize> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let error = Seek { path }.deserialize(deserializer).err()?;
    let location = error.location()?;
    error.to_string().contains(FOUND).then(|| location.line())
}

struct Seek<'a> {
    path: &'a [Segment],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => deserializer.deserialize_any(Here),
            Some((first, rest)) => deserializer.deserialize_any(Step { first, rest }),
        }
    }
}

/// Fails on whatever value it meets, so the error carries that value's mark.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

/// Goes one step down the path; any other shape means the path is absent.
struct Step<'a> {
    first: &'a Segment,
    rest: &'a [Segment],
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Segment::Key(wanted) = self.first else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let matches = match &key {
                serde_yaml::Value::String(s) => s == wanted,
                serde_yaml::Value::Number(n) => n.to_string() == *wanted,
                serde_yaml::Value::Bool(b) => b.to_string() == *wanted,
                _ => false,
            };
            if matches {
                return map.next_value_seed(Seek { path: self.rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Segment::Index(wanted) = self.first else {
            return Ok(());
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek { path: self.rest })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Vec<Segment> {
        text.split('.')
            .flat_map(|part| {
                let mut out = Vec::new();
                let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
                if !key.is_empty() {
                    out.push(Segment::Key(key.into()));
                }
                for index in indexes.split('[').filter(|s| !s.is_empty()) {
                    out.push(Segment::Index(index.trim_end_matches(']').parse().unwrap()));
                }
                out
            })
            .collect()
    }

    const POLICY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  rules:
  - to:
    - operation:
        ports: ['80']
    - operation:
        ports: 80
  portLevelMtls:
    9000: {mode: BAD}
";

    #[test]
    fn finds_the_line_of_a_nested_field() {
        assert_eq!(
            line_of(POLICY, &path("spec.rules[0].to[1].operation.ports")),
            Some(10)
        );
        assert_eq!(
            line_of(POLICY, &path("spec.rules[0].to[0].operation.ports")),
            Some(8)
        );
        assert_eq!(line_of(POLICY, &path("metadata.name")), Some(3));
        assert_eq!(
            line_of(POLICY, &path("spec.portLevelMtls.9000.mode")),
            Some(12)
        );
        assert_eq!(line_of(POLICY, &[]), Some(1));
    }

    #[test]
    fn an_absent_path_has_no_line() {
        assert_eq!(line_of(POLICY, &path("spec.rules[3]")), None);
        assert_eq!(line_of(POLICY, &path("spec.nothing.here")), None);
        assert_eq!(line_of(POLICY, &path("kind.deeper")), None);
        assert_eq!(line_of("", &path("a")), None);
    }
}
