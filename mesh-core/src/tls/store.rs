//! Per-identity certificate store. The first request for an identity fetches a
//! certificate; a task per identity renews it at half its lifetime, retrying
//! with back-off while the current one stays in use. Handshakes read the
//! current certificate when they start, so rotation affects only new ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{CertificateAuthority, TlsError, TrustBundle, WorkloadCertificate};
use crate::identity::Identity;

const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(150);

/// Where certificates come from: a local CA, files, or (later) a remote CA.
pub trait CertificateSource: Send + Sync + std::fmt::Debug + 'static {
    fn fetch(&self, identity: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>>;
}

/// Issues certificates from a CA held in this process.
#[derive(Debug)]
pub struct LocalCa {
    pub ca: CertificateAuthority,
    pub ttl: Duration,
}

impl CertificateSource for LocalCa {
    fn fetch(&self, identity: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
        let result = self.ca.issue(identity, self.ttl);
        Box::pin(async move { result })
    }
}

/// Serves fixed certificates loaded from files, one per identity.
#[derive(Debug, Default)]
pub struct StaticCertificates {
    pem: HashMap<Identity, PemFiles>,
}

/// A certificate chain, its key and the roots, as PEM.
#[derive(Debug)]
struct PemFiles {
    chain: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
}

impl StaticCertificates {
    /// Adds a certificate; it is validated now so a bad file fails at start-up.
    pub fn insert_pem(
        &mut self,
        chain: Vec<u8>,
        key: Vec<u8>,
        roots: Vec<u8>,
    ) -> Result<Identity, TlsError> {
        let cert = WorkloadCertificate::from_pem(&chain, &key, &roots)?;
        self.pem
            .insert(cert.identity.clone(), PemFiles { chain, key, roots });
        Ok(cert.identity)
    }
}

impl CertificateSource for StaticCertificates {
    fn fetch(&self, identity: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
        let result = match self.pem.get(identity) {
            Some(p) => WorkloadCertificate::from_pem(&p.chain, &p.key, &p.roots),
            None => Err(TlsError::NoCertificateFor(identity.clone())),
        };
        Box::pin(async move { result })
    }
}

#[derive(Debug)]
struct Entry {
    current: ArcSwapOption<WorkloadCertificate>,
    changed: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
pub struct CertStore {
    source: Arc<dyn CertificateSource>,
    roots: Arc<TrustBundle>,
    entries: Mutex<HashMap<Identity, Arc<Entry>>>,
}

impl CertStore {
    pub fn new(source: Arc<dyn CertificateSource>, roots: Arc<TrustBundle>) -> Arc<Self> {
        Arc::new(CertStore {
            source,
            roots,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn roots(&self) -> &Arc<TrustBundle> {
        &self.roots
    }

    /// The current certificate, if one has been obtained. Never waits.
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let entries = lock(&self.entries);
        entries.get(identity)?.current.load_full()
    }

    /// The current certificate, fetching the first one if needed. Starts the
    /// renewal task for the identity. Must be called within a tokio runtime.
    pub async fn get(
        self: &Arc<Self>,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, TlsError> {
        let entry = self.entry(identity);
        if let Some(c) = entry.current.load_full() {
            return Ok(c);
        }
        let mut changed = entry.changed.subscribe();
        loop {
            if let Some(c) = entry.current.load_full() {
                return Ok(c);
            }
            if changed.changed().await.is_err() {
                return Err(TlsError::NoCertificateFor(identity.clone()));
            }
        }
    }

    /// Fetches once, now, without waiting for the renewal task: start-up uses
    /// this so a broken source is an error rather than a wait.
    pub async fn prefetch(
        self: &Arc<Self>,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, TlsError> {
        let cert = Arc::new(self.source.fetch(identity).await?);
        self.check_identity(identity, &cert)?;
        // The entry starts with this certificate, so its renewal task waits
        // for half-life instead of fetching again.
        let entry = self.entry_with(identity, Some(cert.clone()));
        entry.changed.send_modify(|v| *v += 1);
        Ok(cert)
    }

    /// Stops renewing an identity and drops its certificate.
    pub fn forget(&self, identity: &Identity) {
        if let Some(entry) = lock(&self.entries).remove(identity)
            && let Some(task) = lock(&entry.task).take()
        {
            task.abort();
        }
    }

    /// Identities and their certificates, for `/config_dump`.
    pub fn snapshot(&self) -> Vec<(Identity, Option<Arc<WorkloadCertificate>>)> {
        let entries = lock(&self.entries);
        let mut out: Vec<_> = entries
            .iter()
            .map(|(id, e)| (id.clone(), e.current.load_full()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Subscribes to renewals of one identity (the value counts renewals).
    pub fn watch(self: &Arc<Self>, identity: &Identity) -> watch::Receiver<u64> {
        self.entry(identity).changed.subscribe()
    }

    fn check_identity(
        &self,
        identity: &Identity,
        cert: &WorkloadCertificate,
    ) -> Result<(), TlsError> {
        if &cert.identity != identity {
            return Err(TlsError::WrongIdentity {
                asked: Box::new(identity.clone()),
                got: Box::new(cert.identity.clone()),
            });
        }
        Ok(())
    }

    fn entry(self: &Arc<Self>, identity: &Identity) -> Arc<Entry> {
        self.entry_with(identity, None)
    }

    /// The entry for `identity`, created (with `initial` as its certificate and
    /// its renewal task started) if absent; an existing entry takes `initial`.
    fn entry_with(
        self: &Arc<Self>,
        identity: &Identity,
        initial: Option<Arc<WorkloadCertificate>>,
    ) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(identity) {
            if initial.is_some() {
                e.current.store(initial);
            }
            return e.clone();
        }
        let entry = Arc::new(Entry {
            current: ArcSwapOption::new(initial),
            changed: watch::channel(0).0,
            task: Mutex::new(None),
        });
        entries.insert(identity.clone(), entry.clone());
        let store = Arc::downgrade(self);
        let task = tokio::spawn(renew(store, identity.clone(), entry.clone()));
        *lock(&entry.task) = Some(task);
        entry
    }
}

async fn renew(store: std::sync::Weak<CertStore>, identity: Identity, entry: Arc<Entry>) {
    let mut retry = RETRY_START;
    loop {
        if let Some(current) = entry.current.load_full() {
            let wait = current
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
        }
        let Some(store) = store.upgrade() else { return };
        let fetched = store.source.fetch(&identity).await.and_then(|c| {
            store.check_identity(&identity, &c)?;
            Ok(c)
        });
        drop(store);
        match fetched {
            Ok(cert) => {
                tracing::info!(%identity, not_after = ?cert.not_after, "certificate issued");
                // A source that can only give a certificate already due for
                // renewal (a fixed file near or past expiry) is asked again
                // with back-off, not in a tight loop.
                let stale = cert.refresh_at() <= SystemTime::now();
                entry.current.store(Some(Arc::new(cert)));
                entry.changed.send_modify(|v| *v += 1);
                if stale {
                    tracing::warn!(%identity, retry_in = ?retry, "the certificate source returned a certificate already due for renewal");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_CAP);
                } else {
                    retry = RETRY_START;
                }
            }
            Err(error) => {
                tracing::warn!(%identity, %error, retry_in = ?retry, "certificate fetch failed; keeping the current one");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_CAP);
            }
        }
    }
}

impl Drop for CertStore {
    fn drop(&mut self) {
        for entry in lock(&self.entries).values() {
            if let Some(task) = lock(&entry.task).take() {
                task.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::LeafInfo;

    fn store(ttl: Duration) -> (Arc<CertStore>, Identity) {
        let ca = CertificateAuthority::generate("test").unwrap();
        let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        (CertStore::new(Arc::new(LocalCa { ca, ttl }), roots), id)
    }

    #[tokio::test(start_paused = true)]
    async fn rotates_at_half_life_and_keeps_the_old_certificate_usable() {
        let (store, id) = store(Duration::from_secs(3600));
        let first = store.get(&id).await.unwrap();
        let first_serial = LeafInfo::parse(first.leaf()).unwrap().serial;
        let mut renewals = store.watch(&id);
        let seen = *renewals.borrow_and_update();
        // Paused time: the renewal sleep of ~30 minutes elapses at once.
        renewals.changed().await.unwrap();
        assert!(*renewals.borrow() > seen);
        let second = store.current(&id).unwrap();
        assert_ne!(LeafInfo::parse(second.leaf()).unwrap().serial, first_serial);
        // Whoever held the first certificate (an established handshake) still has it.
        assert_eq!(LeafInfo::parse(first.leaf()).unwrap().serial, first_serial);
        assert_eq!(second.identity, id);
    }

    /// Counts fetches and always returns an expired certificate.
    #[derive(Debug)]
    struct AlwaysExpired {
        ca: CertificateAuthority,
        fetches: std::sync::atomic::AtomicUsize,
    }

    impl CertificateSource for AlwaysExpired {
        fn fetch(&self, id: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = SystemTime::now();
            let c = self.ca.issue_between(
                id,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            );
            Box::pin(async move { c })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_of_stale_certificates_is_retried_with_back_off() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
        let src = Arc::new(AlwaysExpired {
            ca,
            fetches: Default::default(),
        });
        let store = CertStore::new(src.clone(), roots);
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        store.get(&id).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Back-off 0.5 + 1 + 2 + 4 s: a handful of fetches in 10 s, not thousands.
        let n = src.fetches.load(std::sync::atomic::Ordering::SeqCst);
        assert!((3..=6).contains(&n), "{n} fetches in 10 s");
    }

    #[tokio::test]
    async fn static_source_refuses_unknown_identities() {
        let src = StaticCertificates::default();
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let err = src.fetch(&id).await.unwrap_err().to_string();
        assert!(err.contains("spiffe://cluster.local/ns/a/sa/b"), "{err}");
    }

    /// Counts fetches of a valid certificate.
    #[derive(Debug)]
    struct Counting {
        ca: CertificateAuthority,
        fetches: std::sync::atomic::AtomicUsize,
    }

    impl CertificateSource for Counting {
        fn fetch(&self, id: &Identity) -> BoxFuture<'_, Result<WorkloadCertificate, TlsError>> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let c = self.ca.issue(id, Duration::from_secs(3600));
            Box::pin(async move { c })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_starts_renewal_without_fetching_twice() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let roots = Arc::new(TrustBundle::new(vec![ca.root_der().clone()]).unwrap());
        let src = Arc::new(Counting {
            ca,
            fetches: Default::default(),
        });
        let store = CertStore::new(src.clone(), roots);
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        store.prefetch(&id).await.unwrap();
        // Paused time: the renewal task runs its first step during this second,
        // and must be waiting for half-life (30 minutes), not fetching.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(src.fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(store.current(&id).is_some());
    }

    #[tokio::test]
    async fn forget_drops_the_certificate() {
        let (store, id) = store(Duration::from_secs(3600));
        store.prefetch(&id).await.unwrap();
        assert!(store.current(&id).is_some());
        store.forget(&id);
        assert!(store.current(&id).is_none());
    }
}
