//! One ztunnel's connection: request/Ack exchanges with a deadline, the
//! hello, and the liveness probe.

use std::os::fd::RawFd;
use std::time::Duration;

use mesh_api::istio::workload::zds::{
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_response,
};
use mesh_core::zds::{Datagram, ZdsError, ZdsSocket};

/// How long the liveness probe reads: nothing within it means alive.
const PROBE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Transport(#[from] ZdsError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    socket: ZdsSocket,
}

impl Conn {
    pub fn new(id: u64, socket: ZdsSocket) -> Conn {
        Conn { id, socket }
    }

    pub async fn recv_hello(&self, timeout: Duration) -> Result<ZdsHello, ExchangeError> {
        let datagram = tokio::time::timeout(timeout, self.socket.recv())
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))??;
        read_hello(&datagram)
    }

    /// Sends one request and reads its answer: `Ok(Ok(()))` for an Ack,
    /// `Ok(Err(text))` for a NACK.
    pub async fn exchange(
        &self,
        request: &WorkloadRequest,
        fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<Result<(), String>, ExchangeError> {
        let work = async {
            self.socket.send(request, fd).await?;
            let datagram = self.socket.recv().await?;
            read_answer(&datagram)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))?
    }

    /// Spec 5 liveness: a short read; nothing to read means alive, EOF means
    /// gone, data means the peer spoke out of turn.
    pub async fn probe(&self) -> Result<(), ExchangeError> {
        match tokio::time::timeout(PROBE, self.socket.recv()).await {
            Err(_) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Err(ExchangeError::Protocol("unsolicited message")),
        }
    }
}

/// What ztunnel's first datagram says.
pub fn read_hello(datagram: &Datagram) -> Result<ZdsHello, ExchangeError> {
    if datagram.fd.is_some() {
        return Err(ExchangeError::Protocol("a descriptor came with the hello"));
    }
    Ok(datagram.decode("ZdsHello")?)
}

/// What an answer says: `Ok(Ok(()))` for an Ack, `Ok(Err(text))` for a
/// NACK, an error for anything that is not an answer.
pub fn read_answer(datagram: &Datagram) -> Result<Result<(), String>, ExchangeError> {
    if datagram.fd.is_some() {
        return Err(ExchangeError::Protocol("a descriptor came with an answer"));
    }
    let response: WorkloadResponse = datagram.decode("WorkloadResponse")?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
        Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
        None => Err(ExchangeError::Protocol("an answer without an Ack")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::istio::workload::zds::Ack;
    use prost::Message;

    fn datagram(bytes: Vec<u8>) -> Datagram {
        Datagram { bytes, fd: None }
    }

    #[test]
    fn acks_nacks_and_garbage() {
        let ack = |error: &str| WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.into(),
            })),
        };
        assert_eq!(
            read_answer(&datagram(ack("").encode_to_vec())).unwrap(),
            Ok(())
        );
        assert_eq!(
            read_answer(&datagram(ack("no").encode_to_vec())).unwrap(),
            Err("no".to_string())
        );
        assert!(matches!(
            read_answer(&datagram(Vec::new())),
            Err(ExchangeError::Protocol(_))
        ));
        assert!(matches!(
            read_answer(&datagram(vec![0xff, 0xff])),
            Err(ExchangeError::Transport(ZdsError::Decode { .. }))
        ));
        assert_eq!(read_hello(&datagram(vec![8, 1])).unwrap().version, 1);
    }
}
