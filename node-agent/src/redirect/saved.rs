//! Reading `iptables-save` output: which chains exist in which table, and
//! which rules each chain holds. Only what the install and removal plans
//! need; rule text is kept as printed.

use std::collections::{BTreeMap, BTreeSet};

use super::Jump;

/// The parsed output of `iptables-save`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    chains: BTreeSet<(String, String)>,
    /// (table, chain) -> rule texts after `-A CHAIN `.
    rules: BTreeMap<(String, String), Vec<String>>,
}

impl Saved {
    pub fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        let mut table = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_string();
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(chain) = decl.split_whitespace().next() {
                    saved.chains.insert((table.clone(), chain.to_string()));
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
                saved
                    .rules
                    .entry((table.clone(), chain.to_string()))
                    .or_default()
                    .push(rest.to_string());
            }
        }
        saved
    }

    pub fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains
            .contains(&(table.to_string(), chain.to_string()))
    }

    pub fn rules(&self, table: &str, chain: &str) -> &[String] {
        self.rules
            .get(&(table.to_string(), chain.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn rule_count(&self, table: &str, chain: &str) -> usize {
        self.rules(table, chain).len()
    }

    pub fn jump_count(&self, jump: &Jump) -> usize {
        let wanted = format!("-j {}", jump.to);
        self.rules(jump.table, jump.from)
            .iter()
            .filter(|r| r.trim() == wanted)
            .count()
    }

    pub fn has_jump(&self, jump: &Jump) -> bool {
        self.jump_count(jump) > 0
    }
}
