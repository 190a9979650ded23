//! `ambit app grpc-client`: unary or server-streaming calls to the Echo
//! service, one line per call and a summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::proto::echo_client::EchoClient;
use super::proto::{EchoRequest, StreamRequest};

#[derive(Clone, Debug)]
pub struct GrpcClientConfig {
    /// HOST:PORT.
    pub target: String,
    pub count: u64,
    /// Server-streaming calls asking for this many replies each; unary
    /// calls without.
    pub stream: Option<u32>,
    pub every: Duration,
    pub timeout: Duration,
}

/// One call's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `OK` or the gRPC status code's name.
    pub code: String,
    /// The server named in the reply, `-` without a reply.
    pub backend: String,
    pub replies: u32,
    pub latency: Duration,
    /// The error message, or the first reply's xfcc.
    pub detail: String,
}

impl Call {
    pub fn line(&self) -> String {
        format!(
            "{} {} replies={} {:.1}ms {}",
            self.code,
            self.backend,
            self.replies,
            self.latency.as_secs_f64() * 1000.0,
            self.detail
        )
        .trim_end()
        .to_string()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcSummary {
    pub total: u64,
    /// Status code name to count.
    pub codes: BTreeMap<String, u64>,
    pub backends: BTreeMap<String, u64>,
    /// Replies received over all calls.
    pub replies: u64,
}

impl GrpcSummary {
    pub fn of(calls: &[Call]) -> GrpcSummary {
        let mut summary = GrpcSummary::default();
        for call in calls {
            summary.total += 1;
            *summary.codes.entry(call.code.clone()).or_default() += 1;
            *summary.backends.entry(call.backend.clone()).or_default() += 1;
            summary.replies += u64::from(call.replies);
        }
        summary
    }

    pub fn line(&self) -> String {
        format!(
            "summary {}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    pub fn from_output(output: &str) -> Option<GrpcSummary> {
        output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("summary "))
            .and_then(|json| serde_json::from_str(json).ok())
    }

    pub fn code(&self, code: &str) -> u64 {
        self.codes.get(code).copied().unwrap_or(0)
    }
}

/// Runs the calls over one channel, reporting each; a channel that cannot
/// connect makes every call fail with `Unavailable`.
pub async fn run(config: &GrpcClientConfig, mut report: impl FnMut(&Call)) -> GrpcSummary {
    let endpoint = Endpoint::from_shared(format!("http://{}", config.target))
        .map(|e| e.timeout(config.timeout).connect_timeout(config.timeout));
    let channel = endpoint.map(|e| e.connect_lazy());
    let mut calls = Vec::new();
    for _ in 0..config.count {
        let start = Instant::now();
        let call = match &channel {
            Ok(channel) => once(config, channel.clone(), start).await,
            Err(e) => Call {
                code: "InvalidArgument".into(),
                backend: "-".into(),
                replies: 0,
                latency: start.elapsed(),
                detail: format!("--target {:?}: {e}", config.target),
            },
        };
        report(&call);
        calls.push(call);
        if !config.every.is_zero() {
            tokio::time::sleep(config.every.saturating_sub(start.elapsed())).await;
        }
    }
    GrpcSummary::of(&calls)
}

async fn once(config: &GrpcClientConfig, channel: Channel, start: Instant) -> Call {
    let mut client = EchoClient::new(channel);
    let failed = |status: tonic::Status| Call {
        code: format!("{:?}", status.code()),
        backend: "-".into(),
        replies: 0,
        latency: start.elapsed(),
        detail: status.message().to_string(),
    };
    match config.stream {
        None => match client
            .echo(EchoRequest {
                message: "ping".into(),
            })
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                Call {
                    code: "OK".into(),
                    backend: reply.name,
                    replies: 1,
                    latency: start.elapsed(),
                    detail: reply.xfcc,
                }
            }
            Err(status) => failed(status),
        },
        Some(count) => {
            let mut stream = match client
                .stream(StreamRequest {
                    message: "ping".into(),
                    count,
                })
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => return failed(status),
            };
            let mut replies = 0u32;
            let mut backend = "-".to_string();
            let mut detail = String::new();
            loop {
                match stream.message().await {
                    Ok(Some(reply)) => {
                        if reply.index != replies {
                            return Call {
                                code: "DataLoss".into(),
                                backend: reply.name,
                                replies,
                                latency: start.elapsed(),
                                detail: format!(
                                    "reply {} came where {replies} was due",
                                    reply.index
                                ),
                            };
                        }
                        replies += 1;
                        backend = reply.name;
                        detail = reply.xfcc;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let mut call = failed(status);
                        call.replies = replies;
                        return call;
                    }
                }
            }
            let code = if replies == count { "OK" } else { "DataLoss" };
            Call {
                code: code.into(),
                backend,
                replies,
                latency: start.elapsed(),
                detail,
            }
        }
    }
}
