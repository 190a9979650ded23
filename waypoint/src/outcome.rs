//! How one attempt at a backend ended, shared by retries and the balancer.

/// The result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with this HTTP status.
    Status(u16),
    /// No connection to the endpoint (refused, unreachable, TLS failure):
    /// the request was never sent.
    ConnectFailed,
    /// The stream or connection was reset after the request started.
    Reset,
    /// The attempt's timeout (`backend_request`) fired.
    Timeout,
}

impl Outcome {
    /// A gateway error: 502, 503, 504 or no connection. These count towards
    /// outlier ejection.
    pub fn is_gateway_failure(&self) -> bool {
        matches!(self, Outcome::Status(502..=504) | Outcome::ConnectFailed)
    }
}
