//! Where each watched kind lives on the API server, and which objects of a
//! kind the registry currently holds (what a re-list is compared against).

use gateway_api::apis::standard::gateways::Gateway;
use gateway_api::apis::standard::grpcroutes::GrpcRoute;
use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::ApiResource;

use crate::model::{
    AuthorizationPolicy, Kind, NamespacedName, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Store,
};

/// Group, version and plural of a kind, taken from its Rust type so the
/// URL paths cannot drift from the types the registry decodes into.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        Kind::HTTPRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::GRPCRoute => ApiResource::erase::<GrpcRoute>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        Kind::RequestAuthentication => ApiResource::erase::<RequestAuthentication>(&()),
        Kind::ServiceEntry => ApiResource::erase::<ServiceEntry>(&()),
    }
}

/// Names of the objects of `kind` in `store`.
pub fn names_of_kind(store: &Store, kind: Kind) -> Vec<NamespacedName> {
    match kind {
        Kind::Namespace => store.namespaces.keys().cloned().collect(),
        Kind::Pod => store.pods.keys().cloned().collect(),
        Kind::Service => store.services.keys().cloned().collect(),
        Kind::EndpointSlice => store.endpoint_slices.keys().cloned().collect(),
        Kind::ServiceAccount => store.service_accounts.keys().cloned().collect(),
        Kind::Node => store.nodes.keys().cloned().collect(),
        Kind::Gateway => store.gateways.keys().cloned().collect(),
        Kind::HTTPRoute => store.http_routes.keys().cloned().collect(),
        Kind::GRPCRoute => store.grpc_routes.keys().cloned().collect(),
        Kind::AuthorizationPolicy => store.authorization_policies.keys().cloned().collect(),
        Kind::PeerAuthentication => store.peer_authentications.keys().cloned().collect(),
        Kind::RequestAuthentication => store.request_authentications.keys().cloned().collect(),
        Kind::ServiceEntry => store.service_entries.keys().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_group_version_and_plural() {
        for &kind in Kind::ALL {
            let resource = api_resource(kind);
            assert_eq!(resource.kind, kind.name());
            assert_eq!(resource.api_version, kind.api_version());
        }
        assert_eq!(api_resource(Kind::Pod).plural, "pods");
        assert_eq!(
            api_resource(Kind::AuthorizationPolicy).plural,
            "authorizationpolicies"
        );
        assert_eq!(api_resource(Kind::HTTPRoute).plural, "httproutes");
        assert_eq!(api_resource(Kind::ServiceEntry).plural, "serviceentries");
        assert_eq!(
            api_resource(Kind::RequestAuthentication).plural,
            "requestauthentications"
        );
    }
}
