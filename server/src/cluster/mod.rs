//! Several servers as one cluster (issue 24): [`membership`], SWIM gossip saying which nodes
//! seem alive; [`placement`], consistent hashing with bounded loads deciding where each
//! resource should run; and [`assign`], each node's placer claiming what the placement puts
//! on it under an owner epoch that fences every write of a copy that lost it.

pub mod assign;
pub mod membership;
pub mod placement;
