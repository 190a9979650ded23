//! Who is calling: the xDS and CA services authenticate every stream or call
//! from its `authorization: Bearer <token>` metadata.

pub mod kube;
pub mod tokens;

use futures::future::BoxFuture;
use mesh_core::Identity;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node the caller runs on, when the credential says so (directory
    /// mode: the node a token was issued to; Kubernetes: the node of the pod a
    /// projected token is bound to).
    pub node: Option<String>,
    /// The caller's own workload identity, when the credential names a
    /// service account (Kubernetes TokenReview).
    pub identity: Option<Identity>,
    /// For logs: who this is, in a user's words.
    pub description: String,
}

/// Why a caller was refused; the message is returned to the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the `authorization` metadata")]
    Missing,
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("could not check the token: {0}")]
    Unavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// Checks a call's credentials.
pub trait Authenticate: Send + Sync + std::fmt::Debug + 'static {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// The bearer token of a call, if any.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::Invalid("the scheme must be Bearer".into()))?
        .trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_extracted_and_malformed_ones_named() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(matches!(bearer_token(&m), Err(AuthError::Missing)));
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(bearer_token(&m), Err(AuthError::Invalid(_))));
        m.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&m).unwrap(), "abc");
    }
}
