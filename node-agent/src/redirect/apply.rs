//! Carries out the redirection plans inside a pod's network namespace:
//! `nsenter --net=PATH` runs `iptables-save`, `iptables-restore --noflush`
//! and `ip` there, each bounded by a deadline.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{
    Family, ROUTE_MARK, ROUTE_TABLE, RULE_PREF, RuleOptions, Saved, any_installed, install_script,
    is_installed, removal_script, stop_script,
};

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot run {program} in {netns}: {source}")]
    Spawn {
        program: String,
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` in {netns} failed ({status}): {stderr}")]
    Failed {
        command: String,
        netns: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("`{command}` in {netns} did not finish within {timeout:?}")]
    Timeout {
        command: String,
        netns: PathBuf,
        timeout: Duration,
    },
}

/// Runs the rule plans; cheap to clone.
#[derive(Clone, Debug)]
pub struct Redirector {
    pub mark: u32,
    /// Bound on each command.
    pub command_timeout: Duration,
}

impl Default for Redirector {
    fn default() -> Self {
        Redirector {
            mark: 0x539,
            command_timeout: Duration::from_secs(10),
        }
    }
}

impl Redirector {
    fn options(&self, bypass_inbound: bool) -> RuleOptions {
        RuleOptions {
            mark: self.mark,
            bypass_inbound,
        }
    }

    /// Installs (or refreshes) the rule set and the policy route for each
    /// family. IPv6 is skipped when `ip6tables-restore` is not installed.
    pub async fn install(
        &self,
        netns: &Path,
        families: &[Family],
        bypass_inbound: bool,
    ) -> Result<(), RedirectError> {
        for &family in families {
            if family == Family::V6 && !tool_exists(family.restore_tool()) {
                tracing::warn!(netns = %netns.display(), "ip6tables-restore is not installed; IPv6 is not redirected");
                continue;
            }
            let current = self.saved(netns, family).await?;
            let script = install_script(family, &self.options(bypass_inbound), &current);
            self.run(netns, family.restore_tool(), &["--noflush"], Some(&script))
                .await?;
            self.add_route(netns, family).await?;
        }
        Ok(())
    }

    /// Stops redirecting the pod's new connections for both families while
    /// connections redirected earlier keep their address translation (see
    /// `stop_script`); `remove` finishes the job.
    pub async fn stop_redirecting(&self, netns: &Path) -> Result<(), RedirectError> {
        for family in [Family::V4, Family::V6] {
            if !tool_exists(family.restore_tool()) {
                continue;
            }
            let current = self.saved(netns, family).await?;
            if let Some(script) = stop_script(&current) {
                self.run(netns, family.restore_tool(), &["--noflush"], Some(&script))
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes our chains, jumps, rule and route for both families;
    /// succeeds when none are there.
    pub async fn remove(&self, netns: &Path) -> Result<(), RedirectError> {
        for family in [Family::V4, Family::V6] {
            if !tool_exists(family.restore_tool()) {
                continue;
            }
            let current = self.saved(netns, family).await?;
            if let Some(script) = removal_script(&current) {
                self.run(netns, family.restore_tool(), &["--noflush"], Some(&script))
                    .await?;
            }
            self.remove_route(netns, family).await?;
        }
        Ok(())
    }

    /// Makes the node's own netns (the one this process runs in) rewrite
    /// kubelet probes to exactly `addresses` (spec 6.2).
    pub async fn sync_probe_snat(&self, addresses: &BTreeSet<IpAddr>) -> Result<(), RedirectError> {
        // nsenter's own /proc/self is the netns it inherited from us.
        let own = Path::new("/proc/self/ns/net");
        for family in [Family::V4, Family::V6] {
            if !tool_exists(family.restore_tool()) {
                continue;
            }
            let current = self.saved(own, family).await?;
            let script = super::probe::snat_script(family, addresses, &current);
            self.run(own, family.restore_tool(), &["--noflush"], Some(&script))
                .await?;
        }
        Ok(())
    }

    /// Whether each family's rule set is installed as it should be.
    pub async fn is_installed(
        &self,
        netns: &Path,
        families: &[Family],
        bypass_inbound: bool,
    ) -> Result<bool, RedirectError> {
        for &family in families {
            if family == Family::V6 && !tool_exists(family.restore_tool()) {
                continue;
            }
            let current = self.saved(netns, family).await?;
            if !is_installed(family, &self.options(bypass_inbound), &current) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether any rule of ours is in the netns (either family).
    pub async fn any_installed(&self, netns: &Path) -> Result<bool, RedirectError> {
        for family in [Family::V4, Family::V6] {
            if tool_exists(family.save_tool()) && any_installed(&self.saved(netns, family).await?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn saved(&self, netns: &Path, family: Family) -> Result<Saved, RedirectError> {
        let text = self.run(netns, family.save_tool(), &[], None).await?;
        Ok(Saved::parse(&text))
    }

    async fn add_route(&self, netns: &Path, family: Family) -> Result<(), RedirectError> {
        let v = family.ip_flag();
        if family == Family::V6 {
            let lo = self
                .run(netns, "ip", &["-6", "addr", "show", "dev", "lo"], None)
                .await?;
            if lo.trim().is_empty() {
                return Ok(());
            }
        }
        let pref = RULE_PREF.to_string();
        let table = ROUTE_TABLE.to_string();
        let rules = self
            .run(netns, "ip", &[v, "rule", "show", "pref", &pref], None)
            .await?;
        if rules.trim().is_empty() {
            self.run(
                netns,
                "ip",
                &[
                    v, "rule", "add", "fwmark", ROUTE_MARK, "pref", &pref, "lookup", &table,
                ],
                None,
            )
            .await?;
        }
        self.run(
            netns,
            "ip",
            &[
                v,
                "route",
                "replace",
                "local",
                family.any_route(),
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )
        .await?;
        Ok(())
    }

    async fn remove_route(&self, netns: &Path, family: Family) -> Result<(), RedirectError> {
        let v = family.ip_flag();
        let pref = RULE_PREF.to_string();
        let table = ROUTE_TABLE.to_string();
        // Several copies may exist if someone added ours by hand; bounded.
        for _ in 0..8 {
            let rules = self
                .run(netns, "ip", &[v, "rule", "show", "pref", &pref], None)
                .await?;
            if rules.trim().is_empty() {
                break;
            }
            self.run(
                netns,
                "ip",
                &[
                    v, "rule", "del", "fwmark", ROUTE_MARK, "pref", &pref, "lookup", &table,
                ],
                None,
            )
            .await?;
        }
        let routes = self
            .run(netns, "ip", &[v, "route", "show", "table", &table], None)
            .await
            .unwrap_or_default();
        if routes.contains("local") {
            self.run(
                netns,
                "ip",
                &[
                    v,
                    "route",
                    "del",
                    "local",
                    family.any_route(),
                    "dev",
                    "lo",
                    "table",
                    &table,
                ],
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Runs `program args` in `netns`, feeding `stdin`; returns stdout.
    async fn run(
        &self,
        netns: &Path,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, RedirectError> {
        let command = format!("{program} {}", args.join(" "));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| RedirectError::Spawn {
            program: program.to_string(),
            netns: netns.to_path_buf(),
            source,
        };
        let work = async {
            let mut child = cmd.spawn().map_err(spawn_error)?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes()).await.map_err(spawn_error)?;
                drop(pipe);
            }
            child.wait_with_output().await.map_err(spawn_error)
        };
        let output = tokio::time::timeout(self.command_timeout, work)
            .await
            .map_err(|_| RedirectError::Timeout {
                command: command.clone(),
                netns: netns.to_path_buf(),
                timeout: self.command_timeout,
            })??;
        if !output.status.success() {
            return Err(RedirectError::Failed {
                command,
                netns: netns.to_path_buf(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Whether `program` is on `PATH` (or in the sbin directories root's PATH
/// usually has).
pub fn tool_exists(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file())
}
