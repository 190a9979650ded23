//! `node-agent install-cni`: puts `ambit-cni` on a node. The binary is
//! copied into the CNI bin dir, and `{"type": "ambit-cni", ...}` is chained
//! at the end of the plugin list of the configuration the runtime uses (the
//! first `.conf`/`.conflist`/`.json` file of the conf dir by name). A single
//! `.conf` becomes a `.conflist` of the same stem. Running it again changes
//! nothing; `--uninstall` takes the entry and the binary out again. Every
//! file is replaced through a rename, so the runtime never reads half of one.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

pub const PLUGIN_TYPE: &str = "ambit-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no CNI network configuration (*.conf, *.conflist, *.json) in {0}; is the main network plugin installed?"
    )]
    NoConfig(PathBuf),
    #[error("{path} is not a CNI network configuration: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the plugin entry says.
#[derive(Clone, Debug)]
pub struct PluginEntry {
    pub cni_socket: PathBuf,
    pub timeout: Duration,
}

impl PluginEntry {
    pub fn to_json(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "cniSocket": self.cni_socket,
            "timeout": format!("{}ms", self.timeout.as_millis()),
        })
    }
}

/// The configuration file the runtime uses: the first by name.
pub fn pick_config(names: &[String]) -> Option<&String> {
    let mut candidates: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with('.'))
        .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json"))
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Chains the entry into a configuration (a list, or a single plugin that
/// becomes a list); an earlier entry of ours is replaced.
pub fn chain(config: &Value, entry: &Value) -> Result<Value, String> {
    let Value::Object(map) = config else {
        return Err("not a JSON object".into());
    };
    let mut out = map.clone();
    let mut plugins = match map.get("plugins") {
        Some(Value::Array(plugins)) => plugins.clone(),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => {
            if !map.contains_key("type") {
                return Err("neither \"plugins\" nor \"type\"".into());
            }
            // A single plugin: it becomes the list's first entry; the list
            // keeps the name and version.
            let mut single: Map<String, Value> = map.clone();
            single.remove("cniVersion");
            single.remove("name");
            out = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = map.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
            vec![Value::Object(single)]
        }
    };
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    out.insert("plugins".into(), Value::Array(plugins));
    Ok(Value::Object(out))
}

/// Takes our entry out of a list; `None` when it had none.
pub fn unchain(config: &Value) -> Option<Value> {
    let plugins = config.get("plugins")?.as_array()?;
    if !plugins.iter().any(is_ours) {
        return None;
    }
    let mut out = config.clone();
    let kept: Vec<Value> = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    out["plugins"] = Value::Array(kept);
    Some(out)
}

/// What `install` did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub changed: bool,
}

pub fn install(
    binary: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    entry: &PluginEntry,
) -> Result<Installed, InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    copy_binary(binary, &target)?;
    let (path, config) = read_config(conf_dir)?;
    let chained = chain(&config, &entry.to_json()).map_err(|reason| InstallError::BadConfig {
        path: path.clone(),
        reason,
    })?;
    let new_path = if path.extension().is_some_and(|e| e == "conf") {
        path.with_extension("conflist")
    } else {
        path.clone()
    };
    let changed = chained != config || new_path != path;
    if changed {
        write_json(&new_path, &chained)?;
        if new_path != path {
            remove(&path)?;
        }
    }
    Ok(Installed {
        binary: target,
        config: new_path,
        changed,
    })
}

/// Takes our entry out of the runtime's configuration and removes the
/// binary; a node without either is fine.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<(), InstallError> {
    match read_config(conf_dir) {
        Ok((path, config)) => {
            if let Some(unchained) = unchain(&config) {
                write_json(&path, &unchained)?;
            }
        }
        Err(InstallError::NoConfig(_)) => {}
        Err(e) => return Err(e),
    }
    remove(&bin_dir.join(PLUGIN_TYPE))
}

fn read_config(conf_dir: &Path) -> Result<(PathBuf, Value), InstallError> {
    let io = |source| InstallError::Io {
        path: conf_dir.to_path_buf(),
        source,
    };
    let names: Vec<String> = fs::read_dir(conf_dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let name = pick_config(&names).ok_or_else(|| InstallError::NoConfig(conf_dir.to_path_buf()))?;
    let path = conf_dir.join(name);
    let text = fs::read(&path).map_err(|source| InstallError::Io {
        path: path.clone(),
        source,
    })?;
    let config = serde_json::from_slice(&text).map_err(|e| InstallError::BadConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok((path, config))
}

fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.ambit-tmp"))
}

fn write_json(path: &Path, value: &Value) -> Result<(), InstallError> {
    let io = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let tmp = temporary(path);
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn copy_binary(from: &Path, to: &Path) -> Result<(), InstallError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
    };
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = temporary(to);
    fs::copy(from, &tmp).map_err(io(from))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    fs::rename(&tmp, to).map_err(io(to))
}

fn remove(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InstallError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> PluginEntry {
        PluginEntry {
            cni_socket: "/var/run/ambit/cni.sock".into(),
            timeout: Duration::from_secs(30),
        }
    }

    const BRIDGE_CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"bridge","bridge":"cni0",
        "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#;

    #[test]
    fn a_single_conf_becomes_a_list_ending_with_us() {
        let chained = chain(
            &serde_json::from_str(BRIDGE_CONF).unwrap(),
            &entry().to_json(),
        )
        .unwrap();
        assert_eq!(chained["name"], "k8s");
        assert_eq!(chained["cniVersion"], "1.0.0");
        let plugins = chained["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0]["type"], "bridge");
        assert!(plugins[0].get("name").is_none());
        assert_eq!(plugins[1]["type"], "ambit-cni");
        assert_eq!(plugins[1]["timeout"], "30000ms");
        // Idempotent.
        assert_eq!(chain(&chained, &entry().to_json()).unwrap(), chained);
        let back = unchain(&chained).unwrap();
        assert_eq!(back["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(unchain(&back), None);
    }

    #[test]
    fn refusals_and_the_first_file_by_name() {
        assert!(chain(&json!([1]), &entry().to_json()).is_err());
        assert!(chain(&json!({"name": "x"}), &entry().to_json()).is_err());
        assert!(chain(&json!({"plugins": 3}), &entry().to_json()).is_err());
        let names = [
            "99-z.conflist",
            "10-b.conf",
            ".hidden.conf",
            "README",
            "05-a.json",
        ]
        .map(String::from);
        assert_eq!(pick_config(&names).unwrap(), "05-a.json");
    }

    #[test]
    fn install_twice_then_uninstall_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&conf).unwrap();
        fs::write(conf.join("10-bridge.conf"), BRIDGE_CONF).unwrap();
        let binary = dir.path().join("ambit-cni-build");
        fs::write(&binary, b"#!/bin/sh\n").unwrap();

        let first = install(&binary, &bin, &conf, &entry()).unwrap();
        assert!(first.changed);
        assert_eq!(first.config, conf.join("10-bridge.conflist"));
        assert!(!conf.join("10-bridge.conf").exists());
        let mode = fs::metadata(bin.join("ambit-cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let second = install(&binary, &bin, &conf, &entry()).unwrap();
        assert!(!second.changed);

        uninstall(&bin, &conf).unwrap();
        assert!(!bin.join("ambit-cni").exists());
        let left: Value =
            serde_json::from_slice(&fs::read(conf.join("10-bridge.conflist")).unwrap()).unwrap();
        assert_eq!(left["plugins"].as_array().unwrap().len(), 1);
        uninstall(&bin, &conf).unwrap();

        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let err = install(&binary, &bin, &empty, &entry()).unwrap_err();
        assert!(
            err.to_string().contains("no CNI network configuration"),
            "{err}"
        );
    }
}
