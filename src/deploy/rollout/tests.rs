use super::*;

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:03}")).collect()
}

fn rollouts() -> Vec<Rollout> {
    let mut out = vec![Rollout::default()];
    for canary in [0, 1, 3, 50] {
        for max in [
            None,
            Some(MaxParallel::Count(1)),
            Some(MaxParallel::Count(4)),
            Some(MaxParallel::Percent(1)),
            Some(MaxParallel::Percent(25)),
            Some(MaxParallel::Percent(100)),
        ] {
            out.push(Rollout {
                max_parallel: max,
                canary,
            });
        }
    }
    out
}

#[test]
fn waves_partition_targets_deterministically() {
    for seed in 0..20u8 {
        let id = [seed; 16];
        for n in [0, 1, 2, 7, 20, 101] {
            let targets = nodes(n);
            for r in rollouts() {
                let plan = Plan::new(&id, &targets, &r);
                let mut all: Vec<String> = plan.waves.iter().flatten().cloned().collect();
                all.sort();
                assert_eq!(all, targets, "{r:?} n={n}: each node exactly once");
                assert!(plan.waves.iter().all(|w| !w.is_empty()));
                let mut rev = targets.clone();
                rev.reverse();
                rev.extend(targets.iter().take(3).cloned());
                assert_eq!(
                    Plan::new(&id, &rev, &r),
                    plan,
                    "order and duplicates ignored"
                );
                if r.canary > 0 && n > 0 {
                    assert_eq!(
                        plan.waves[0].len(),
                        (r.canary as usize).min(n),
                        "canary first"
                    );
                }
                let cap = match r.max_parallel {
                    None => n,
                    Some(MaxParallel::Count(c)) => c as usize,
                    Some(MaxParallel::Percent(p)) => (n * p as usize).div_ceil(100).max(1),
                };
                let skip = usize::from(r.canary > 0);
                assert!(plan.waves.iter().skip(skip).all(|w| w.len() <= cap.max(1)));
            }
        }
    }
}

#[test]
fn no_flags_is_one_wave_and_ids_shuffle() {
    let t = nodes(30);
    assert_eq!(Plan::new(&[1; 16], &t, &Rollout::default()).waves.len(), 1);
    let r = Rollout {
        max_parallel: Some(MaxParallel::Count(5)),
        canary: 0,
    };
    let a = Plan::new(&[1; 16], &t, &r);
    let b = Plan::new(&[2; 16], &t, &r);
    assert_eq!(a.waves.len(), 6);
    assert_ne!(
        a.waves[0], b.waves[0],
        "a new event picks other first nodes"
    );
}

fn alive(plan: &Plan) -> BTreeSet<String> {
    plan.waves.iter().flatten().cloned().collect()
}

#[test]
fn later_waves_wait_for_ok_of_alive_earlier_targets() {
    let r = Rollout {
        max_parallel: Some(MaxParallel::Count(2)),
        canary: 1,
    };
    let plan = Plan::new(&[9; 16], &nodes(5), &r);
    assert_eq!(plan.waves.len(), 3);
    let mut alive = alive(&plan);
    let mut outcomes = BTreeMap::new();
    let canary = plan.waves[0][0].clone();
    let w1 = plan.waves[1][0].clone();
    let w2 = plan.waves[2][0].clone();
    assert_eq!(plan.may_start(&canary, &alive, &outcomes), Decision::Start);
    assert_eq!(
        plan.may_start(&w1, &alive, &outcomes),
        Decision::Wait {
            pending: vec![canary.clone()]
        }
    );
    outcomes.insert(canary.clone(), Outcome::Ok);
    assert_eq!(plan.may_start(&w1, &alive, &outcomes), Decision::Start);
    assert!(
        matches!(plan.may_start(&w2, &alive, &outcomes), Decision::Wait { pending } if pending.len() == 2)
    );
    // A dead node of an earlier wave does not block.
    outcomes.insert(plan.waves[1][0].clone(), Outcome::Ok);
    alive.remove(&plan.waves[1][1]);
    assert_eq!(plan.may_start(&w2, &alive, &outcomes), Decision::Start);
    assert_eq!(
        plan.may_start("stranger", &alive, &outcomes),
        Decision::NotTarget
    );
}

#[test]
fn failure_halts_waves_not_started() {
    let r = Rollout {
        max_parallel: Some(MaxParallel::Count(2)),
        canary: 1,
    };
    let plan = Plan::new(&[3; 16], &nodes(7), &r);
    let all = alive(&plan);
    for bad in [Outcome::Failed, Outcome::RolledBack] {
        // The canary fails and then dies: every later wave is still halted.
        let mut outcomes = BTreeMap::new();
        let canary = plan.waves[0][0].clone();
        outcomes.insert(canary.clone(), bad);
        let mut alive = all.clone();
        alive.remove(&canary);
        for wave in &plan.waves[1..] {
            for n in wave {
                assert_eq!(
                    plan.may_start(n, &alive, &outcomes),
                    Decision::Halted {
                        by: canary.clone(),
                        outcome: bad
                    }
                );
            }
        }
        // A failure inside a started wave does not stop its own peers.
        let mut outcomes = BTreeMap::new();
        outcomes.insert(canary.clone(), Outcome::Ok);
        outcomes.insert(plan.waves[1][0].clone(), bad);
        assert_eq!(
            plan.may_start(&plan.waves[1][1], &all, &outcomes),
            Decision::Start
        );
        assert!(matches!(
            plan.may_start(&plan.waves[2][0], &all, &outcomes),
            Decision::Halted { .. }
        ));
    }
}

/// A target of an open wave with no report past the deadline is late; a wave opens only
/// once the one before it is all ok, counted from that wave's last report.
#[test]
fn late_targets_are_those_of_open_waves_past_the_deadline() {
    let plan = Plan {
        waves: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
    };
    let alive: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut reported = BTreeMap::new();
    assert!(late(&plan, &alive, &reported, 100, 130, 30).is_empty());
    assert_eq!(
        late(&plan, &alive, &reported, 100, 131, 30),
        BTreeSet::from(["a".to_string()])
    );
    reported.insert("a".to_string(), (Outcome::Ok, 120));
    assert!(
        late(&plan, &alive, &reported, 100, 150, 30).is_empty(),
        "wave 2 opened at 120"
    );
    reported.insert("b".to_string(), (Outcome::Ok, 140));
    assert_eq!(
        late(&plan, &alive, &reported, 100, 151, 30),
        BTreeSet::from(["c".to_string()])
    );
    reported.insert("a".to_string(), (Outcome::Failed, 120));
    assert!(
        late(
            &plan,
            &alive,
            &BTreeMap::from([("a".to_string(), (Outcome::Failed, 120))]),
            100,
            999,
            30
        )
        .is_empty(),
        "a failed first wave never opens the second"
    );
}

#[test]
fn a_nodes_swarm_is_the_earlier_waves_and_its_own_wave_without_it() {
    let plan = Plan {
        waves: vec![
            vec!["a".into()],
            vec!["b".into(), "c".into()],
            vec!["d".into(), "e".into()],
        ],
    };
    let swarm = plan.swarm_of("d");
    assert_eq!(swarm.holders, ["a", "b", "c"]);
    assert_eq!(swarm.fetching, ["e"]);
    let first = plan.swarm_of("a");
    assert!(first.holders.is_empty() && first.fetching.is_empty());
}
