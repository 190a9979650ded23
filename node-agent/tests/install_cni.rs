//! `node-agent install-cni` run as a process, as a DaemonSet runs it.

use std::process::Command;

use anyhow::Result;
use serde_json::Value;

fn install_cni(
    bin: &std::path::Path,
    conf: &std::path::Path,
    extra: &[&str],
) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["install-cni", "--cni-bin-dir"])
        .arg(bin)
        .arg("--cni-conf-dir")
        .arg(conf)
        .args([
            "--cni-socket",
            "/run/ambit/test.sock",
            "--cni-timeout",
            "5s",
        ])
        .args(extra)
        .output()?)
}

#[test]
fn installs_idempotently_and_uninstalls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("10-k8s.conflist"),
        r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )?;
    for _ in 0..2 {
        let out = install_cni(&bin, &conf, &[])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The plugin beside node-agent was copied.
    let copied = std::fs::read(bin.join("ambit-cni"))?;
    assert_eq!(copied, std::fs::read(env!("CARGO_BIN_EXE_ambit-cni"))?);
    let list: Value = serde_json::from_slice(&std::fs::read(conf.join("10-k8s.conflist"))?)?;
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3, "{list}");
    assert_eq!(plugins[2]["type"], "ambit-cni");
    assert_eq!(plugins[2]["cniSocket"], "/run/ambit/test.sock");
    assert_eq!(plugins[2]["timeout"], "5000ms");

    let out = install_cni(&bin, &conf, &["--uninstall"])?;
    assert!(out.status.success());
    assert!(!bin.join("ambit-cni").exists());
    let list: Value = serde_json::from_slice(&std::fs::read(conf.join("10-k8s.conflist"))?)?;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 2);

    // A node without a network configuration: a clear error, non-zero exit.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let out = install_cni(&bin, &empty, &[])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no CNI network configuration"), "{stderr}");
    Ok(())
}
