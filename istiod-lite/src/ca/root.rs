//! The CA's signing root: created on first start and kept in a directory
//! (`root-cert.pem`, `root-key.pem` readable by the owner only), or loaded
//! from files an operator provides.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mesh_core::tls::CertificateAuthority;

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
const ORGANIZATION: &str = "Ambit";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to create a new root"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error("creating a root: {0}")]
    Create(mesh_core::tls::TlsError),
}

/// The root in `dir`, created there if the directory holds none.
pub fn load_or_create(dir: &Path) -> Result<CertificateAuthority, RootError> {
    let cert = dir.join(ROOT_CERT_FILE);
    let key = dir.join(ROOT_KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => return from_files(&cert, &key),
        (true, false) => {
            return Err(RootError::HalfPresent {
                present: cert,
                missing: key,
            });
        }
        (false, true) => {
            return Err(RootError::HalfPresent {
                present: key,
                missing: cert,
            });
        }
        (false, false) => {}
    }
    std::fs::create_dir_all(dir).map_err(|source| RootError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = CertificateAuthority::generate(ORGANIZATION).map_err(RootError::Create)?;
    // The key first: a crash in between leaves a key without a certificate,
    // which the next start reports instead of silently replacing.
    write_new(&key, ca.key_pem().as_bytes(), 0o600)?;
    write_new(&cert, ca.root_pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "created a new CA root");
    Ok(ca)
}

/// A root from an explicit certificate and PKCS#8 key file.
pub fn from_files(cert: &Path, key: &Path) -> Result<CertificateAuthority, RootError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| RootError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    if !key_pem.contains("PRIVATE KEY") {
        return Err(RootError::Invalid {
            path: key.to_path_buf(),
            reason: "no PEM PRIVATE KEY block".into(),
        });
    }
    CertificateAuthority::from_pem(&cert_pem, &key_pem).map_err(|e| {
        // Tell the operator which of the two files is at fault.
        let path = if matches!(e, mesh_core::tls::TlsError::BadKey(_)) {
            key
        } else {
            cert
        };
        RootError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), RootError> {
    let io = |source| RootError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_restart_keeps_the_same_root_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(again.root_der(), first.root_der());
    }

    #[test]
    fn a_missing_or_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains(ROOT_CERT_FILE), "{err}");

        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let err = from_files(&cert, &dir.path().join(ROOT_KEY_FILE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert.pem"), "{err}");
        let err = from_files(&dir.path().join("absent.pem"), &cert)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.pem"), "{err}");
    }
}
