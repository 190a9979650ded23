//! The CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
