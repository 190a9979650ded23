//! Which paths under the root are read: sources (`*.yaml`/`*.yml` files, not
//! hidden nor inside a hidden directory, not status files) and status files
//! (`*.status.yaml`, not hidden), whose Pod documents carry pod status.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::status::is_status_file;

/// Whether `path` (under `root`) names a source file by its name alone.
pub fn is_source_path(root: &Path, path: &Path) -> bool {
    let has_yaml_extension = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == "yaml" || e == "yml");
    has_yaml_extension && !is_status_file(path) && !is_hidden(root, path)
}

/// Whether any component of `path` below `root` starts with a dot (editor
/// swap files, `.git`, the `..data` of a mounted ConfigMap); a path outside
/// `root` counts as hidden, it is none of ours.
pub fn is_hidden(root: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return true;
    };
    relative.components().any(|c| match c {
        Component::Normal(name) => name.to_string_lossy().starts_with('.'),
        _ => false,
    })
}

/// Whether `path` (under `root`) names a status file that is read: not
/// hidden, so the hidden temporary file of an atomic write is not.
pub fn is_status_path(root: &Path, path: &Path) -> bool {
    is_status_file(path) && !is_hidden(root, path)
}

/// The source and status files at or below `path`, sorted. Directory
/// symlinks are not followed (a link back up would loop); file symlinks are.
pub fn find_source_files(root: &Path, path: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if is_hidden(root, path) && path != root {
        return found;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => walk(root, path, &mut found),
        Ok(_) if is_read(root, path) && path.is_file() => found.push(path.to_path_buf()),
        _ => {}
    }
    found.sort();
    found
}

fn is_read(root: &Path, path: &Path) -> bool {
    is_source_path(root, path) || is_status_path(root, path)
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("{}: cannot list directory: {e}", dir.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_hidden(root, &path) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &path, found),
            Ok(_) if is_read(root, &path) && path.is_file() => found.push(path),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_yaml_files_that_are_not_status_files_are_sources() {
        let root = Path::new("/cfg");
        assert!(is_source_path(root, Path::new("/cfg/a.yaml")));
        assert!(is_source_path(root, Path::new("/cfg/sub/dir/a.yml")));
        assert!(!is_source_path(root, Path::new("/cfg/a.json")));
        assert!(!is_source_path(root, Path::new("/cfg/a.yaml~")));
        assert!(!is_source_path(root, Path::new("/cfg/.a.yaml.swp")));
        assert!(!is_source_path(root, Path::new("/cfg/.a.yaml")));
        assert!(!is_source_path(root, Path::new("/cfg/.git/x.yaml")));
        assert!(!is_source_path(root, Path::new("/cfg/a.status.yaml")));
        assert!(!is_source_path(root, Path::new("/elsewhere/a.yaml")));
    }

    #[test]
    fn finds_nested_sources_and_status_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::create_dir_all(root.join(".hidden")).unwrap();
        for f in [
            "a.yaml",
            "b/c/d.yml",
            "b/e.status.yaml",
            ".hidden/f.yaml",
            "b/notes.txt",
        ] {
            fs::write(root.join(f), "").unwrap();
        }
        assert_eq!(
            find_source_files(root, root),
            [
                root.join("a.yaml"),
                root.join("b/c/d.yml"),
                root.join("b/e.status.yaml")
            ]
        );
        assert_eq!(
            find_source_files(root, &root.join("b/c/d.yml")),
            [root.join("b/c/d.yml")]
        );
        assert!(find_source_files(root, &root.join("gone")).is_empty());
    }
}
