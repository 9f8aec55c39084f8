//! The logfleet controller: from one `LogCollector` resource it rolls out
//! the agent DaemonSet and the aggregator, and reports which nodes lack a
//! working agent, and why.
//!
//! Pure logic comes first, apart from any I/O, so it is tested on real
//! k8s-openapi values without a cluster: [`crd`] is the resource and its
//! CRD; [`placement`] decides, as the DaemonSet controller does, whether a
//! daemon pod belongs on a node; [`coverage`] says which expected nodes lack
//! a working agent, and why; [`validate`] refuses what the CRD cannot (bad
//! regexes, sizes, durations) before it reaches the agents, and [`policy`]
//! what the administrator does not allow (namespaces, images, host paths); [`render`]
//! turns a collector into the objects to apply ([`names`] keeps their names
//! valid whatever the collector's); [`status`] turns what was
//! observed into the status and events.
//!
//! I/O around them: [`reconcile`] applies, observes and writes the status;
//! [`run`] is `logfleet controller` (Lease, watches, metrics endpoint);
//! [`dump`] reads the same objects from a kubectl dump or the cluster for
//! `logfleet status`; [`bundle`] is the install bundle ([`openshift`] its
//! OpenShift part); [`check`] says what
//! the API server and the controller would refuse of a file, for
//! `logfleet render -f`; [`rbac`] derives what the API server checks of a
//! request, so tests hold the controller to the bundle's ClusterRole.

pub mod bundle;
pub mod check;
pub mod coverage;
pub mod crd;
pub mod credentials;
pub mod dump;
pub mod metrics;
pub mod names;
pub mod openshift;
pub mod placement;
pub mod policy;
pub mod rbac;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod status;
pub mod validate;
