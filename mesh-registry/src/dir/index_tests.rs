use super::*;
use crate::dir::parse::parse_file;

fn namespace(name: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{v: \"{label}\"}}\n"
    )
}

fn read(index: &mut FileIndex, file: &str, text: &str) -> Vec<String> {
    let parsed = parse_file(Path::new(file), text);
    describe(index.update_file(Path::new(file), parsed))
}

fn describe(changes: Vec<Change>) -> Vec<String> {
    changes
        .into_iter()
        .map(|c| match c {
            Change::Upsert(o) => format!(
                "upsert {} v={}",
                o.key(),
                o.metadata()
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("v"))
                    .cloned()
                    .unwrap_or_default()
            ),
            Change::Delete(k) => format!("delete {k}"),
        })
        .collect()
}

#[test]
fn a_file_upserts_its_objects_and_deletes_the_ones_it_drops() {
    let mut index = FileIndex::default();
    let both = format!("{}---\n{}", namespace("a", "1"), namespace("b", "1"));
    assert_eq!(
        read(&mut index, "x.yaml", &both),
        ["upsert Namespace a v=1", "upsert Namespace b v=1"]
    );
    assert!(read(&mut index, "x.yaml", &both).is_empty());
    assert_eq!(
        read(&mut index, "x.yaml", &namespace("a", "2")),
        ["upsert Namespace a v=2", "delete Namespace b"]
    );
    assert_eq!(
        describe(index.remove_file(Path::new("x.yaml"))),
        ["delete Namespace a"]
    );
    assert_eq!(index.files().count(), 0);
}

#[test]
fn a_broken_edit_keeps_the_last_good_objects_and_records_the_error() {
    let mut index = FileIndex::default();
    let both = format!("{}---\n{}", namespace("a", "1"), namespace("b", "1"));
    read(&mut index, "x.yaml", &both);
    let broken = format!(
        "{}---\nkind: Namespace\nmetadata: {{name: [b\n",
        namespace("a", "2")
    );
    assert_eq!(
        read(&mut index, "x.yaml", &broken),
        ["upsert Namespace a v=2"]
    );
    let errors: Vec<String> = index.errors().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("x.yaml:8: invalid YAML"),
        "{errors:?}"
    );
    // Fixed, and b is really gone now.
    assert_eq!(
        read(&mut index, "x.yaml", &namespace("a", "2")),
        ["delete Namespace b"]
    );
    assert!(index.errors().is_empty());
}

#[test]
fn an_unreadable_file_keeps_its_objects() {
    let mut index = FileIndex::default();
    read(&mut index, "x.yaml", &namespace("a", "1"));
    index.read_failed(
        Path::new("x.yaml"),
        DocumentError {
            file: "x.yaml".into(),
            line: 1,
            problem: super::super::parse::DocumentProblem::Read("not UTF-8".into()),
        },
    );
    assert_eq!(index.errors().len(), 1);
    assert!(index.owner(&key("a")).is_some());
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: crate::model::Kind::Namespace,
        name: crate::model::NamespacedName::cluster(name),
    }
}

#[test]
fn the_last_file_read_wins_and_the_other_takes_over_when_it_goes() {
    let mut index = FileIndex::default();
    read(&mut index, "one.yaml", &namespace("a", "1"));
    assert_eq!(
        read(&mut index, "two.yaml", &namespace("a", "2")),
        ["upsert Namespace a v=2"]
    );
    assert_eq!(index.owner(&key("a")), Some(Path::new("two.yaml")));
    // Re-reading one.yaml unchanged does not take the object back.
    assert!(read(&mut index, "one.yaml", &namespace("a", "1")).is_empty());
    // Editing it does: it is now the most recent definition.
    assert_eq!(
        read(&mut index, "one.yaml", &namespace("a", "3")),
        ["upsert Namespace a v=3"]
    );
    assert_eq!(
        describe(index.remove_file(Path::new("one.yaml"))),
        ["upsert Namespace a v=2"]
    );
    assert_eq!(
        describe(index.remove_file(Path::new("two.yaml"))),
        ["delete Namespace a"]
    );
    assert_eq!(index.owner(&key("a")), None);
}

#[test]
fn a_file_dropping_a_shared_object_hands_it_to_the_other_file() {
    let mut index = FileIndex::default();
    read(&mut index, "one.yaml", &namespace("a", "1"));
    read(&mut index, "two.yaml", &namespace("a", "2"));
    assert_eq!(
        read(&mut index, "two.yaml", &namespace("b", "2")),
        ["upsert Namespace a v=1", "upsert Namespace b v=2"]
    );
    assert_eq!(index.owner(&key("a")), Some(Path::new("one.yaml")));
}

#[test]
fn removing_an_unknown_file_changes_nothing() {
    let mut index = FileIndex::default();
    assert!(index.remove_file(Path::new("nope.yaml")).is_empty());
}
