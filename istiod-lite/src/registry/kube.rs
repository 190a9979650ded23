//! The Kubernetes source: kube-runtime watchers feeding the registry.
