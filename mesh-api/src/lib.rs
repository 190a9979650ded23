//! Wire types (placeholder until generated).
