//! Wire types of Istio ambient's protocols, generated at build time from the
//! hand-written `.proto` files in `proto/`: delta xDS (envoy.service.discovery.v3,
//! envoy.config.core.v3, google.rpc), workload discovery (istio.workload),
//! L4 authorization (istio.security), certificate issuance (istio.v1.auth),
//! the istio-cni node agent protocol (istio.workload.zds), and Ambit's own
//! waypoint configuration (ambit.waypoint.v1). This crate holds
//! only prost messages and type URLs; it contains no logic.

/// Type URL of `istio.workload.Address` resources (workloads and services).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of `istio.security.Authorization` resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of `ambit.waypoint.v1.Waypoint` resources (a waypoint's L7 config).
pub const WAYPOINT_TYPE_URL: &str = "type.googleapis.com/ambit.waypoint.v1.Waypoint";

/// Ambit's own API packages.
pub mod ambit {
    /// Waypoint configuration.
    pub mod waypoint {
        /// Package `ambit.waypoint.v1`: routes and L7 policies per waypoint.
        #[allow(clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ambit.waypoint.v1.rs"));
        }
    }
}

/// Envoy API packages.
pub mod envoy {
    /// Envoy service packages.
    pub mod service {
        /// Discovery services.
        pub mod discovery {
            /// Package `envoy.service.discovery.v3`: delta xDS messages.
            #[allow(clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }

    /// Envoy configuration packages.
    pub mod config {
        /// Core configuration types.
        pub mod core {
            /// Package `envoy.config.core.v3`: `Node`.
            #[allow(clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

/// Google API packages (well-known types come from `prost_types`).
pub mod google {
    /// Package `google.rpc`: `Status`.
    #[allow(clippy::all)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Istio API packages.
pub mod istio {
    /// Package `istio.workload`: workload discovery resources.
    #[allow(clippy::all)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));

        /// Package `istio.workload.zds`: istio-cni node agent <-> ztunnel messages.
        #[allow(clippy::all)]
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }

    /// Package `istio.security`: L4 authorization policies.
    #[allow(clippy::all)]
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// Istio v1 API packages.
    pub mod v1 {
        /// Package `istio.v1.auth`: certificate issuance.
        #[allow(clippy::all)]
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}
