//! The parts of HTTPRoute and GRPCRoute specs the waypoint translation
//! reads, in one shape for both kinds. The gateway-api crate generates a
//! separate type per position (route filters, backend filters, each route
//! kind), so a route's spec is read through its JSON form into these.

use serde::Deserialize;

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<MatchSpec>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
    pub timeouts: Option<TimeoutsSpec>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct MatchSpec {
    pub path: Option<PathSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchSpec>,
    /// A string for HTTPRoute, a `GrpcMethodSpec` object for GRPCRoute.
    pub method: Option<serde_json::Value>,
}

#[derive(Deserialize, Default, Debug)]
pub struct PathSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Deserialize, Default, Debug)]
pub struct ValueMatchSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Default, Debug)]
pub struct GrpcMethodSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FilterSpec {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: Option<HeaderModifierSpec>,
    pub response_header_modifier: Option<HeaderModifierSpec>,
    pub request_redirect: Option<RedirectSpec>,
    pub url_rewrite: Option<RewriteSpec>,
    pub request_mirror: Option<MirrorSpec>,
}

#[derive(Deserialize, Default, Debug)]
pub struct HeaderModifierSpec {
    #[serde(default)]
    pub set: Vec<NameValue>,
    #[serde(default)]
    pub add: Vec<NameValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Deserialize, Default, Debug)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
    pub port: Option<i32>,
    pub status_code: Option<i64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PathModifierSpec {
    #[serde(rename = "type")]
    pub type_: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
pub struct RewriteSpec {
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    pub backend_ref: BackendRefSpec,
    pub percent: Option<i32>,
    pub fraction: Option<FractionSpec>,
}

#[derive(Deserialize, Default, Debug)]
pub struct FractionSpec {
    pub numerator: i32,
    pub denominator: Option<i32>,
}

#[derive(Deserialize, Default, Debug)]
pub struct BackendRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    pub weight: Option<i32>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}
