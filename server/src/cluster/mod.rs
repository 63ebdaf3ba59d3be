//! Several servers as one cluster (issue 24). Built so far: [`membership`], SWIM gossip
//! saying which nodes seem alive, and [`placement`], consistent hashing with bounded loads
//! deciding where each resource should run. Stored assignments with owner epochs, lookups and
//! failover come next.

pub mod membership;
pub mod placement;
