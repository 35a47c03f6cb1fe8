//! The nemesis: faults injected into a cluster of real `kvnode` processes on a seeded schedule.
//!
//! - **Crashes**: SIGKILL of one node, of the primary, or of a minority; restarted on heal on the
//!   same data directory.
//! - **Pauses**: SIGSTOP of one node or of the primary, SIGCONT on heal. A paused primary wakes up
//!   still believing it leads, which is exactly the case epochs and leases must fence.
//! - **Partitions**: iptables rules dropping UDP between the nodes' peer addresses: the primary
//!   isolated, a majority/minority split, a ring of overlapping majorities, a bridge node that
//!   sees both halves, and a one-way cut where the primary can hear but not speak.
//! - **Packet loss**: every node-to-node packet dropped with probability `p` (`-m statistic`).
//! - **Long backup outages** (large-state profile only): SIGKILL of one backup for 20 to 40 s,
//!   every other fault, so it comes back behind the compacted log and needs a snapshot.
//!
//! Every rule lives in one dedicated chain, [`CHAIN`], jumped to from `INPUT`, and matches only
//! UDP between two node addresses on the cluster's peer port, so client traffic and other tests
//! on the machine are untouched. Rules sit on `INPUT` only: every loopback packet crosses it, and a
//! drop there is silent, as on a real network (a drop on `OUTPUT` makes the sender's `sendmsg`
//! fail with `EPERM` instead, which is a local artefact, not a network fault).
//!
//! Invariant: the chain is removed when the [`Firewall`] is dropped, on success and on panic alike;
//! a chain left over by a run that was killed outright is removed when the next run starts.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use replikv::NodeId;
use serde::Serialize;

use crate::common::{Cluster, ClusterSpec};
use crate::history::Nanos;

/// The dedicated iptables chain of the chaos tests.
pub const CHAIN: &str = "REPLIKV-CHAOS";

/// Addresses used once, at start, to prove that the chosen iptables really filters loopback UDP.
const PROBE_FROM: &str = "127.0.0.140";
const PROBE_TO: &str = "127.0.0.139";

/// A handle on the chaos chain. Dropping it removes the chain and every rule in it.
pub struct Firewall {
    program: PathBuf,
    /// The chain holding every rule: [`CHAIN`], or another name for the firewall's own tests.
    chain: String,
    /// Rules match UDP from this port to this port: the nodes' peer port.
    port: u16,
}

impl Firewall {
    /// Finds an iptables program that filters loopback UDP on this machine, installs the chain,
    /// and returns it. `Err` says why none works (not root, no iptables, no kernel support).
    ///
    /// Both the legacy and the nft backends may be installed with only one of them effective, and
    /// `iptables -L` succeeding proves nothing, so each candidate is probed: a datagram must be
    /// dropped with a rule in place and delivered without.
    pub fn install(chain: &str, port: u16) -> Result<Firewall, String> {
        let mut reasons = Vec::new();
        for program in candidates() {
            let firewall = Firewall {
                program: program.clone(),
                chain: chain.to_string(),
                port,
            };
            match firewall.setup().and_then(|()| firewall.probe()) {
                Ok(()) => return Ok(firewall),
                Err(reason) => reasons.push(format!("{}: {reason}", program.display())),
            }
            // Dropping `firewall` removes whatever the failed attempt installed.
        }
        if reasons.is_empty() {
            reasons.push("no iptables, iptables-legacy or iptables-nft found".into());
        }
        Err(reasons.join("; "))
    }

    /// The iptables program in use.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let output = Command::new(&self.program)
            .arg("-w")
            .args(args)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", self.program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{} {}` failed: {}",
                self.program.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn setup(&self) -> Result<(), String> {
        self.teardown();
        self.run(&["-N", &self.chain])?;
        self.run(&["-I", "INPUT", "1", "-j", &self.chain])
    }

    /// Removes the chain and the jump to it; tolerant of either being absent.
    fn teardown(&self) {
        // Several jumps may be left over from runs killed outright: remove them all.
        while self.run(&["-D", "INPUT", "-j", &self.chain]).is_ok() {}
        let _ = self.run(&["-F", &self.chain]);
        let _ = self.run(&["-X", &self.chain]);
    }

    /// Drops UDP on the peer port from `from` to `to`, always or with `probability`.
    pub fn drop_link(&self, from: &str, to: &str, probability: Option<f64>) -> Result<(), String> {
        let port = self.port.to_string();
        let mut args = vec![
            "-A",
            &self.chain,
            "-p",
            "udp",
            "-s",
            from,
            "-d",
            to,
            "--sport",
            &port,
            "--dport",
            &port,
        ];
        let probability = probability.map(|p| format!("{p:.4}"));
        if let Some(p) = &probability {
            args.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
        }
        args.extend(["-j", "DROP"]);
        self.run(&args)
    }

    /// Removes every rule (the chain and its jump stay).
    pub fn heal(&self) -> Result<(), String> {
        self.run(&["-F", &self.chain])
    }

    /// Whether the chain exists (for tests of the cleanup).
    #[cfg(test)]
    fn chain_exists(&self) -> bool {
        self.run(&["-S", &self.chain]).is_ok()
    }

    fn probe(&self) -> Result<(), String> {
        let receiver = UdpSocket::bind((PROBE_TO, self.port))
            .map_err(|err| format!("probe socket on {PROBE_TO}: {err}"))?;
        let sender = UdpSocket::bind((PROBE_FROM, self.port))
            .map_err(|err| format!("probe socket on {PROBE_FROM}: {err}"))?;
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|err| err.to_string())?;
        let delivered = |tag: &[u8]| -> bool {
            // A dropped datagram may make `send_to` fail on some setups: that counts as dropped.
            if sender.send_to(tag, (PROBE_TO, self.port)).is_err() {
                return false;
            }
            let mut buffer = [0u8; 16];
            loop {
                match receiver.recv_from(&mut buffer) {
                    Ok((len, _)) if &buffer[..len] == tag => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        };
        self.drop_link(PROBE_FROM, PROBE_TO, None)?;
        if delivered(b"filtered") {
            return Err("a DROP rule in the chain did not stop loopback UDP".into());
        }
        self.heal()?;
        if !delivered(b"open") {
            return Err("loopback UDP is not delivered even without rules".into());
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// iptables programs worth probing, in order of preference.
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    let mut found = Vec::new();
    for name in ["iptables", "iptables-legacy", "iptables-nft"] {
        if let Some(path) = dirs.iter().map(|dir| dir.join(name)).find(|p| p.is_file()) {
            if !found.contains(&path) {
                found.push(path);
            }
        }
    }
    found
}

/// The kinds of fault, as the report counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillOne,
    KillPrimary,
    KillMinority,
    PauseOne,
    PausePrimary,
    IsolatePrimary,
    MajorityMinority,
    MajoritiesRing,
    Bridge,
    OneWayFromPrimary,
    PacketLoss,
    /// A backup killed for a long stretch (large-state profile): it returns through a snapshot.
    KillBackupLong,
}

impl FaultKind {
    /// Every kind that makes sense for `nodes` nodes (a ring of majorities needs five).
    pub fn all(nodes: u64) -> Vec<FaultKind> {
        let mut kinds = vec![
            FaultKind::KillOne,
            FaultKind::KillPrimary,
            FaultKind::KillMinority,
            FaultKind::PauseOne,
            FaultKind::PausePrimary,
            FaultKind::IsolatePrimary,
            FaultKind::MajorityMinority,
            FaultKind::Bridge,
            FaultKind::OneWayFromPrimary,
            FaultKind::PacketLoss,
        ];
        if nodes >= 5 {
            kinds.push(FaultKind::MajoritiesRing);
        }
        if nodes < 3 {
            kinds.retain(|kind| !matches!(kind, FaultKind::Bridge));
        }
        kinds
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillOne => "kill-one",
            FaultKind::KillPrimary => "kill-primary",
            FaultKind::KillMinority => "kill-minority",
            FaultKind::PauseOne => "pause-one",
            FaultKind::PausePrimary => "pause-primary",
            FaultKind::IsolatePrimary => "partition-isolate-primary",
            FaultKind::MajorityMinority => "partition-majority-minority",
            FaultKind::MajoritiesRing => "partition-majorities-ring",
            FaultKind::Bridge => "partition-bridge",
            FaultKind::OneWayFromPrimary => "partition-one-way-from-primary",
            FaultKind::PacketLoss => "packet-loss",
            FaultKind::KillBackupLong => "kill-backup-long",
        }
    }

    /// Whether the fault is aimed at the primary, which the nemesis must then look up.
    pub fn targets_primary(self) -> bool {
        matches!(
            self,
            FaultKind::KillPrimary
                | FaultKind::PausePrimary
                | FaultKind::IsolatePrimary
                | FaultKind::OneWayFromPrimary
                | FaultKind::KillBackupLong
        )
    }
}

/// One entry of the schedule: start `kind` at `start` (since the schedule began) for `length`.
#[derive(Clone, Debug)]
pub struct PlannedFault {
    pub kind: FaultKind,
    pub start: Duration,
    pub length: Duration,
}

/// Shortest and longest fault, and pause between faults. Faults outlast the failure timeout
/// (300 ms by default) many times over, so every one of them forces elections.
/// With these, one round of every kind (at most 11 × 8.5 s, plus the first gap) fits in the
/// bounded run's 100 s, whatever the seed.
const FAULT_LENGTH_MS: (u64, u64) = (3_000, 6_000);
const GAP_MS: (u64, u64) = (1_000, 2_500);

/// Length of a long backup outage (large-state profile): long enough for the log to move past
/// the backup's last entry many times over under load.
const LONG_OUTAGE_MS: (u64, u64) = (20_000, 40_000);

/// A seeded schedule filling `total`: faults one at a time, with healthy gaps between them.
/// Kinds are drawn in shuffled rounds, so every kind occurs once before any occurs twice. With
/// `long_outages`, every other fault is a long backup outage ([`FaultKind::KillBackupLong`]).
pub fn schedule(
    rng: &mut StdRng,
    nodes: u64,
    total: Duration,
    long_outages: bool,
) -> Vec<PlannedFault> {
    let mut plan = Vec::new();
    let mut round: Vec<FaultKind> = Vec::new();
    let mut at = Duration::from_millis(rng.gen_range(GAP_MS.0..=GAP_MS.1));
    loop {
        let long = long_outages && plan.len() % 2 == 1;
        let (shortest, longest) = if long {
            LONG_OUTAGE_MS
        } else {
            FAULT_LENGTH_MS
        };
        let length = Duration::from_millis(rng.gen_range(shortest..=longest));
        if at + length > total {
            return plan;
        }
        if round.is_empty() {
            round = FaultKind::all(nodes);
            round.shuffle(rng);
        }
        let kind = if long {
            FaultKind::KillBackupLong
        } else {
            round.pop().unwrap_or(FaultKind::KillOne)
        };
        plan.push(PlannedFault {
            kind,
            start: at,
            length,
        });
        at += length + Duration::from_millis(rng.gen_range(GAP_MS.0..=GAP_MS.1));
    }
}

/// What a fault does, concretely.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Kill(Vec<NodeId>),
    Pause(Vec<NodeId>),
    /// Directed links `(from, to)` whose packets are dropped.
    Cut(Vec<(NodeId, NodeId)>),
    /// Every directed link drops packets with this probability.
    Loss(f64),
}

/// The concrete action for `kind` on nodes `1..=nodes`, given the primary if one is known.
pub fn plan_action(
    rng: &mut StdRng,
    kind: FaultKind,
    nodes: u64,
    primary: Option<NodeId>,
) -> Action {
    let mut shuffled: Vec<NodeId> = (1..=nodes).collect();
    shuffled.shuffle(rng);
    // Without a known primary, a primary-targeted fault hits a random node.
    let primary = primary.unwrap_or(shuffled[0]);
    let others = |node: NodeId| (1..=nodes).filter(move |other| *other != node);
    let minority = usize::try_from(nodes / 2).unwrap_or(1).max(1);
    match kind {
        FaultKind::KillOne => Action::Kill(vec![shuffled[0]]),
        FaultKind::KillPrimary => Action::Kill(vec![primary]),
        FaultKind::KillMinority => Action::Kill(sorted(&shuffled[..minority])),
        FaultKind::PauseOne => Action::Pause(vec![shuffled[0]]),
        FaultKind::PausePrimary => Action::Pause(vec![primary]),
        FaultKind::IsolatePrimary => {
            Action::Cut(both_ways(&[primary], &others(primary).collect::<Vec<_>>()))
        }
        FaultKind::MajorityMinority => {
            let (small, large) = shuffled.split_at(minority);
            Action::Cut(both_ways(small, large))
        }
        FaultKind::Bridge => {
            // left | bridge | right: the bridge sees both halves, the halves not each other.
            let half = (shuffled.len() - 1) / 2;
            let (left, rest) = shuffled.split_at(half);
            Action::Cut(both_ways(left, &rest[1..]))
        }
        FaultKind::MajoritiesRing => {
            // On a circle, each node keeps the `reach` nearest on either side: itself plus them
            // make a majority, and no two nodes see the same majority.
            let n = shuffled.len();
            let reach = (n / 2).div_ceil(2);
            let mut links = Vec::new();
            for i in 0..n {
                for j in 0..n {
                    let distance = (i + n - j) % n;
                    if i != j && distance.min(n - distance) > reach {
                        links.push((shuffled[i], shuffled[j]));
                    }
                }
            }
            links.sort_unstable();
            Action::Cut(links)
        }
        FaultKind::OneWayFromPrimary => {
            Action::Cut(others(primary).map(|other| (primary, other)).collect())
        }
        FaultKind::PacketLoss => Action::Loss([0.05, 0.1, 0.2, 0.3][rng.gen_range(0..4)]),
        FaultKind::KillBackupLong => {
            let backups: Vec<NodeId> = others(primary).collect();
            Action::Kill(vec![backups.choose(rng).copied().unwrap_or(shuffled[0])])
        }
    }
}

fn sorted(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes
}

fn both_ways(left: &[NodeId], right: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let mut links = Vec::new();
    for &a in left {
        for &b in right {
            links.push((a, b));
            links.push((b, a));
        }
    }
    links.sort_unstable();
    links
}

/// A fault as it happened, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub action: Action,
    /// The primary when the fault began, as far as the nemesis could tell.
    pub primary: Option<NodeId>,
    pub started_at: Nanos,
    pub ended_at: Nanos,
    /// Seconds from the heal until every node agreed on one primary again; `None` if that did
    /// not happen before the next fault began.
    pub recovered_after_s: Option<f64>,
}

/// Applies faults to a cluster and undoes them.
pub struct Nemesis {
    firewall: Firewall,
    spec: ClusterSpec,
    killed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    pub records: Vec<FaultRecord>,
    /// Nodes found dead that the nemesis did not kill: each is a crash of the product.
    pub unexpected_exits: Vec<String>,
}

impl Nemesis {
    pub fn new(firewall: Firewall, spec: ClusterSpec) -> Nemesis {
        Nemesis {
            firewall,
            spec,
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            records: Vec::new(),
            unexpected_exits: Vec::new(),
        }
    }

    /// Starts `action`. Any fault still active is healed first.
    pub fn start(&mut self, cluster: &mut Cluster, action: &Action) -> Result<(), String> {
        self.heal(cluster)?;
        match action {
            Action::Kill(nodes) => {
                for &node in nodes {
                    cluster.kill(node);
                    self.killed.insert(node);
                }
            }
            Action::Pause(nodes) => {
                for &node in nodes {
                    cluster.pause(node);
                    self.paused.insert(node);
                }
            }
            Action::Cut(links) => {
                for &(from, to) in links {
                    self.firewall
                        .drop_link(&self.spec.ip(from), &self.spec.ip(to), None)?;
                }
            }
            Action::Loss(probability) => {
                for from in 1..=self.spec.nodes {
                    for to in (1..=self.spec.nodes).filter(|to| *to != from) {
                        self.firewall.drop_link(
                            &self.spec.ip(from),
                            &self.spec.ip(to),
                            Some(*probability),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends every fault: rules flushed, paused nodes continued, killed nodes restarted. A node
    /// that died without being killed is recorded in [`Nemesis::unexpected_exits`] and restarted.
    pub fn heal(&mut self, cluster: &mut Cluster) -> Result<(), String> {
        self.firewall.heal()?;
        for node in std::mem::take(&mut self.paused) {
            cluster.resume(node);
        }
        for node in std::mem::take(&mut self.killed) {
            cluster.restart(node);
        }
        for node in 1..=self.spec.nodes {
            let Some(pid) = cluster.node(node).pid() else {
                continue;
            };
            if has_exited(pid) {
                self.unexpected_exits.push(format!(
                    "node {node} (pid {pid}) exited on its own; see {}",
                    cluster.node(node).log_path.display()
                ));
                cluster.kill(node);
                cluster.restart(node);
            }
        }
        Ok(())
    }
}

/// Whether process `pid` has ended (it is gone, or a zombie waiting to be reaped). Reads Linux's
/// `/proc`, like the rest of the nemesis assumes Linux (iptables).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cut_links(action: Action) -> Vec<(NodeId, NodeId)> {
        match action {
            Action::Cut(links) => links,
            other => panic!("expected a cut, got {other:?}"),
        }
    }

    /// Which nodes each node can still reach (itself included), from a set of cut links.
    fn reachable(nodes: u64, links: &[(NodeId, NodeId)]) -> Vec<usize> {
        (1..=nodes)
            .map(|a| {
                (1..=nodes)
                    .filter(|&b| a == b || !links.contains(&(a, b)))
                    .count()
            })
            .collect()
    }

    #[test]
    fn schedules_are_seeded_and_cover_every_kind() {
        let plan = |seed| {
            schedule(
                &mut StdRng::seed_from_u64(seed),
                3,
                Duration::from_secs(600),
                false,
            )
        };
        let first: Vec<_> = plan(7)
            .iter()
            .map(|f| (f.kind, f.start, f.length))
            .collect();
        let again: Vec<_> = plan(7)
            .iter()
            .map(|f| (f.kind, f.start, f.length))
            .collect();
        assert_eq!(first, again);
        let kinds: BTreeSet<FaultKind> = first.iter().map(|f| f.0).collect();
        assert_eq!(kinds, FaultKind::all(3).into_iter().collect());
        // One fault at a time, all inside the total.
        for pair in first.windows(2) {
            assert!(pair[0].1 + pair[0].2 < pair[1].1);
        }
        assert!(first.iter().all(|f| f.1 + f.2 <= Duration::from_secs(600)));
    }

    #[test]
    fn the_bounded_run_covers_every_kind_whatever_the_seed() {
        for nodes in [3, 5] {
            for seed in 0..500 {
                let plan = schedule(
                    &mut StdRng::seed_from_u64(seed),
                    nodes,
                    Duration::from_secs(100),
                    false,
                );
                let kinds: BTreeSet<FaultKind> = plan.iter().map(|f| f.kind).collect();
                assert_eq!(
                    kinds.len(),
                    FaultKind::all(nodes).len(),
                    "{nodes} nodes, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn the_large_state_schedule_alternates_long_backup_outages_with_every_other_kind() {
        let plan = schedule(
            &mut StdRng::seed_from_u64(3),
            3,
            Duration::from_secs(1800),
            true,
        );
        for (i, fault) in plan.iter().enumerate() {
            let long = fault.kind == FaultKind::KillBackupLong;
            assert_eq!(long, i % 2 == 1, "fault {i}: {fault:?}");
            assert_eq!(
                long,
                fault.length >= Duration::from_millis(LONG_OUTAGE_MS.0)
            );
        }
        let others: BTreeSet<FaultKind> = plan
            .iter()
            .map(|f| f.kind)
            .filter(|kind| *kind != FaultKind::KillBackupLong)
            .collect();
        assert_eq!(others, FaultKind::all(3).into_iter().collect());
        let mut rng = StdRng::seed_from_u64(1);
        for primary in 1..=3 {
            match plan_action(&mut rng, FaultKind::KillBackupLong, 3, Some(primary)) {
                Action::Kill(nodes) => assert!(nodes.len() == 1 && nodes[0] != primary),
                other => panic!("expected a kill, got {other:?}"),
            }
        }
    }

    #[test]
    fn isolating_the_primary_cuts_it_both_ways() {
        let mut rng = StdRng::seed_from_u64(1);
        let links = cut_links(plan_action(&mut rng, FaultKind::IsolatePrimary, 3, Some(2)));
        assert_eq!(links, vec![(1, 2), (2, 1), (2, 3), (3, 2)]);
    }

    #[test]
    fn a_split_leaves_exactly_one_majority() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let links = cut_links(plan_action(&mut rng, FaultKind::MajorityMinority, 5, None));
            let mut sizes = reachable(5, &links);
            sizes.sort_unstable();
            assert_eq!(sizes, vec![2, 2, 3, 3, 3], "seed {seed}: {links:?}");
        }
    }

    #[test]
    fn a_ring_gives_every_node_its_own_majority() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let links = cut_links(plan_action(&mut rng, FaultKind::MajoritiesRing, 5, None));
            assert_eq!(reachable(5, &links), vec![3; 5], "seed {seed}");
            // Symmetric: a ring is a set of undirected cuts.
            assert!(links.iter().all(|(a, b)| links.contains(&(*b, *a))));
        }
    }

    #[test]
    fn a_bridge_sees_everyone_and_the_halves_do_not_meet() {
        for nodes in [3, 5] {
            let mut rng = StdRng::seed_from_u64(nodes);
            let links = cut_links(plan_action(&mut rng, FaultKind::Bridge, nodes, None));
            let sizes = reachable(nodes, &links);
            let everyone = usize::try_from(nodes).unwrap();
            assert_eq!(
                sizes.iter().filter(|&&s| s == everyone).count(),
                1,
                "{links:?}"
            );
            assert!(!links.is_empty());
        }
    }

    #[test]
    fn a_one_way_cut_silences_only_the_primary() {
        let mut rng = StdRng::seed_from_u64(3);
        let links = cut_links(plan_action(
            &mut rng,
            FaultKind::OneWayFromPrimary,
            3,
            Some(3),
        ));
        assert_eq!(links, vec![(3, 1), (3, 2)]);
    }

    #[test]
    fn killing_a_minority_leaves_a_majority() {
        for nodes in [3, 5] {
            let mut rng = StdRng::seed_from_u64(nodes);
            match plan_action(&mut rng, FaultKind::KillMinority, nodes, None) {
                Action::Kill(killed) => assert_eq!(killed.len() as u64, nodes / 2),
                other => panic!("expected a kill, got {other:?}"),
            }
        }
    }

    /// Whether a datagram from `from` to `to` (both on `port`) arrives.
    fn delivered(from: &str, to: &str, port: u16) -> bool {
        let receiver = UdpSocket::bind((to, port)).expect("bind the receiver");
        let sender = UdpSocket::bind((from, port)).expect("bind the sender");
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("set a read timeout");
        if sender.send_to(b"ping", (to, port)).is_err() {
            return false;
        }
        let mut buffer = [0u8; 8];
        receiver.recv_from(&mut buffer).is_ok()
    }

    /// Needs root and iptables, like the chaos run; uses its own chain, port and addresses so
    /// that it can run beside it.
    #[test]
    fn one_way_cuts_drop_one_direction_and_the_chain_goes_away_on_panic() {
        const SELF_TEST_CHAIN: &str = "REPLIKV-CHAOS-SELFTEST";
        const PORT: u16 = 24199;
        let (a, b) = ("127.0.0.151", "127.0.0.152");
        let firewall = match Firewall::install(SELF_TEST_CHAIN, PORT) {
            Ok(firewall) => firewall,
            Err(why) => {
                let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
                assert!(
                    !ci,
                    "CI=true, so the firewall test may not be skipped: {why}"
                );
                eprintln!("SKIPPED firewall test (needs root and iptables): {why}");
                return;
            }
        };
        let program = firewall.program().to_path_buf();
        assert!(delivered(a, b, PORT) && delivered(b, a, PORT));
        firewall.drop_link(a, b, None).expect("add a one-way cut");
        assert!(!delivered(a, b, PORT), "the cut direction still delivers");
        assert!(delivered(b, a, PORT), "the other direction was cut too");
        firewall
            .drop_link(b, a, Some(0.5))
            .expect("a packet-loss rule is accepted");
        firewall.heal().expect("flush the rules");
        assert!(delivered(a, b, PORT), "healing left a rule behind");

        firewall.drop_link(a, b, None).expect("add a cut again");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _owned = firewall;
            panic!("a test fails with a cut in place");
        }));
        assert!(panicked.is_err());
        let inspector = Firewall {
            program,
            chain: SELF_TEST_CHAIN.to_string(),
            port: PORT,
        };
        assert!(!inspector.chain_exists(), "the chain survived the panic");
        assert!(delivered(a, b, PORT), "a cut survived the panic");
    }

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(!has_exited(std::process::id()));
        assert!(has_exited(u32::MAX - 1));
    }
}
