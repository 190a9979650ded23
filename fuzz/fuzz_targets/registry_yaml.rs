//! Fuzzes istiod-lite's directory source parser
//! (`istiod_lite::registry::dir::parse_file`): one file's text to objects and
//! refused documents.
//!
//! Invariants:
//! - `parse_file` never panics, on any UTF-8 text;
//! - every error names the file and a line inside the text, and has a reason;
//! - every object has a name, and a namespace when its kind is namespaced
//!   (a document without one lands in `default`);
//! - parsing is deterministic: the same text gives the same result.
#![no_main]

use std::path::Path;

use istiod_lite::registry::dir::parse_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let file = Path::new("fuzz/input.yaml");
    let parsed = parse_file(file, text);
    let lines = text.split('\n').count().max(1);
    for error in &parsed.errors {
        assert_eq!(error.file, file);
        assert!(
            (1..=lines).contains(&error.line),
            "line {} outside 1..={lines}: {error}",
            error.line
        );
        assert!(!error.problem.to_string().trim().is_empty(), "{error:?}");
    }
    for parsed_object in &parsed.objects {
        assert!((1..=lines).contains(&parsed_object.line));
        let key = parsed_object.object.key();
        assert!(!key.name.name.is_empty(), "{key:?}");
        assert_eq!(
            key.kind.namespaced(),
            !key.name.namespace.is_empty(),
            "{key:?}"
        );
    }
    assert_eq!(parse_file(file, text), parsed, "not deterministic");
});
