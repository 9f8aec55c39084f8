//! `logfleet status`: one row per expected node, from a kubectl dump.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use logfleet_controller::coverage::{self, Inputs};
use logfleet_controller::dump;

pub struct StatusArgs<'a> {
    /// A kubectl dump; `None`: the cluster of the current kubeconfig.
    pub from_file: Option<&'a Path>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub json: bool,
    pub silence: Option<Duration>,
    /// Last push per node (from the aggregator, when one was given).
    pub last_push: BTreeMap<String, i64>,
}

fn ts(ns: i64) -> Option<k8s_openapi::jiff::Timestamp> {
    k8s_openapi::jiff::Timestamp::from_nanosecond(ns as i128).ok()
}

async fn cluster_client() -> Result<kube::Client> {
    // kube explains a missing configuration three ways in one long line;
    // one sentence with the way out serves better.
    match kube::Client::try_default().await {
        Ok(c) => Ok(c),
        Err(kube::Error::InferConfig(_)) => anyhow::bail!(
            "no cluster configured (no kubeconfig, not in a pod); \
             set KUBECONFIG or use --from-file dump.json"
        ),
        Err(e) => Err(e).context("connecting to the cluster of the current kubeconfig"),
    }
}

/// The collector's read token and CA (PEM), from the Secrets its agent
/// DaemonSet mounts, so that `status --aggregator` needs no files.
pub async fn cluster_credentials(
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(Option<String>, Option<Vec<u8>>)> {
    use k8s_openapi::api::core::v1::Secret;
    use logfleet_controller::credentials::{value, CA_CRT, READ_TOKEN};
    let client = cluster_client().await?;
    let d = dump::from_cluster(client.clone(), namespace)
        .await
        .context("reading the agent DaemonSets")?;
    let ds = dump::agent_daemonset(&d, namespace, name)?;
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &ns);
    let (tokens, tls) = dump::secret_names(ds);
    let read = |secret: Option<String>, key: &'static str| {
        let api = api.clone();
        let ns = ns.clone();
        async move {
            let Some(secret) = secret else {
                return Ok(None);
            };
            let s = api
                .get(&secret)
                .await
                .with_context(|| format!("reading Secret {ns}/{secret}"))?;
            Ok::<_, anyhow::Error>(value(&s, key))
        }
    };
    Ok((
        read(tokens, READ_TOKEN).await?,
        read(tls, CA_CRT).await?.map(String::into_bytes),
    ))
}

/// Prints the rows and summary; returns how many expected nodes lack a
/// working agent.
pub async fn run(a: StatusArgs<'_>) -> Result<i32> {
    let d = match a.from_file {
        Some(path) => {
            let data =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            dump::parse(&data).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let client = cluster_client().await?;
            dump::from_cluster(client, a.namespace)
                .await
                .context("reading nodes, agent DaemonSets and pods")?
        }
    };
    let ds = dump::agent_daemonset(&d, a.namespace, a.name)?;
    let pods = dump::owned_pods(&d, ds);
    let scope = dump::scope_of(&d, ds);
    let template = ds.spec.template.spec.clone().unwrap_or_default();
    let generation = dump::template_generation(ds);
    let last_push: BTreeMap<String, k8s_openapi::jiff::Timestamp> = a
        .last_push
        .iter()
        .filter_map(|(n, t)| Some((n.clone(), ts(*t)?)))
        .collect();
    let now =
        ts(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)).context("clock out of range")?;
    let (rows, sum) = coverage::classify(Inputs {
        nodes: &d.nodes,
        pods: &pods,
        template: &template,
        current_revision: generation.as_deref(),
        revision_label: "pod-template-generation",
        scope: scope.as_ref(),
        last_push: &last_push,
        now,
        silence: a.silence,
    });
    if a.json {
        let nodes: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "node": r.node,
                    "pod": r.pod,
                    "ready": r.ready,
                    "revision": r.revision,
                    "lastPush": r.last_push.map(|t| t.to_string()),
                    "reason": r.gap.as_ref().map(|g| g.reason.as_str()),
                    "message": r.gap.as_ref().map(|g| g.message.clone()),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "nodes": nodes,
            "summary": {"expected": sum.expected, "ready": sum.ready, "upToDate": sum.up_to_date, "missing": sum.missing},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{:<24} {:<32} {:<6} {:<9} {:<22} REASON",
            "NODE", "AGENT POD", "READY", "REVISION", "LAST PUSH"
        );
        for r in &rows {
            println!(
                "{:<24} {:<32} {:<6} {:<9} {:<22} {}",
                r.node,
                r.pod.as_deref().unwrap_or("-"),
                r.ready,
                r.revision.as_deref().unwrap_or("-"),
                r.last_push
                    .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into()),
                r.gap
                    .as_ref()
                    .map(|g| format!("{}: {}", g.reason.as_str(), g.message))
                    .unwrap_or_default()
            );
        }
        println!(
            "{} nodes expected, {} with a ready agent, {} up to date, {} missing an agent",
            sum.expected, sum.ready, sum.up_to_date, sum.missing
        );
    }
    Ok(i32::try_from(sum.missing).unwrap_or(i32::MAX))
}
