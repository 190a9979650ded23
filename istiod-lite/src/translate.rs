//! Translation: a pure function from the registry's `Store` to workload xDS resources.
