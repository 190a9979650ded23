//! Directory mode's scheduling and ClusterIP allocation for waypoints:
//! stable choices, so a restart or an unrelated change never moves a
//! waypoint or renumbers its Service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{NamespacedName, Store};

/// The range waypoint Services' ClusterIPs come from in directory mode
/// (docs/waypoint-provisioning.md). Inside Kubernetes' usual service range, at its top,
/// where hand-written Services rarely sit; collisions are avoided anyway.
pub const WAYPOINT_VIP_RANGE: &str = "10.96.255.0/24";

/// The node for a waypoint pod: the node it already runs on while that node
/// exists, else the node with the fewest pods, ties broken by name. None
/// when there are no nodes.
pub fn choose_node(store: &Store, current: Option<&str>) -> Option<String> {
    if let Some(node) = current
        && store.nodes.contains_key(&NamespacedName::cluster(node))
    {
        return Some(node.to_string());
    }
    let mut load: BTreeMap<&str, usize> =
        store.nodes.keys().map(|k| (k.name.as_str(), 0)).collect();
    for pod in store.pods.values() {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            && let Some(count) = load.get_mut(node)
        {
            *count += 1;
        }
    }
    // BTreeMap order is by name, and min_by_key keeps the first minimum.
    load.into_iter()
        .min_by_key(|(_, count)| *count)
        .map(|(name, _)| name.to_string())
}

/// ClusterIPs for the waypoints' Services: a waypoint keeps `current` when it
/// is in `range` and no other Service holds it; otherwise it gets the first
/// free address from a start derived from its name, so the same waypoint
/// gets the same address in every run. `taken` are the other Services'
/// ClusterIPs. A waypoint left out (range exhausted) gets no address.
pub fn allocate_ips(
    waypoints: &[NamespacedName],
    current: &BTreeMap<NamespacedName, Ipv4Addr>,
    taken: &BTreeSet<Ipv4Addr>,
    range: Ipv4Net,
) -> BTreeMap<NamespacedName, Ipv4Addr> {
    let hosts: Vec<Ipv4Addr> = range.hosts().collect();
    let mut used: BTreeSet<Ipv4Addr> = taken.clone();
    let mut out = BTreeMap::new();
    // Keepers first, so a newcomer never takes an address someone holds.
    for key in waypoints {
        if let Some(ip) = current.get(key)
            && range.contains(ip)
            && !used.contains(ip)
        {
            used.insert(*ip);
            out.insert(key.clone(), *ip);
        }
    }
    if hosts.is_empty() {
        return out;
    }
    for key in waypoints {
        if out.contains_key(key) {
            continue;
        }
        let start = (fnv1a(key.to_string().as_bytes()) % hosts.len() as u64) as usize;
        let free = (0..hosts.len())
            .map(|offset| hosts[(start + offset) % hosts.len()])
            .find(|ip| !used.contains(ip));
        if let Some(ip) = free {
            used.insert(ip);
            out.insert(key.clone(), ip);
        }
    }
    out
}

/// FNV-1a: a hash whose value is fixed by definition, unlike std's hashers,
/// which may change between releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
