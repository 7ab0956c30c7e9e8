//! GPT as a prefix LM: the prefix attends to itself in both directions, the continuation
//! causally — checked on the mask itself and on what each position's logits depend on.

use candle_core::{Device, Tensor};
use lm_models::gpt::{prefix_lm_bias, Gpt, GptConfig};
use lm_models::StepContext;

fn logits_at(m: &Gpt, ids: &[u32], prefix: u32, pos: usize) -> Vec<f32> {
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    let p = Tensor::new(&[prefix], &Device::Cpu).unwrap();
    let l = m.forward_prefix_lm(&x, &p, &StepContext::EVAL).unwrap();
    l.get(0).unwrap().get(pos).unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_bias_shows_the_prefix_both_ways_and_the_rest_causally() {
    let p = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let bias = prefix_lm_bias(&p, 4).unwrap();
    let seen: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|r| {
            let m: Vec<Vec<f32>> = bias.get(r).unwrap().get(0).unwrap().to_vec2().unwrap();
            m.iter()
                .map(|row| row.iter().map(|&b| u8::from(b == 0.0)).collect())
                .collect()
        })
        .collect();
    // Row 0: a prefix of 2 — queries 0 and 1 see keys 0 and 1; then causal.
    assert_eq!(
        seen[0],
        vec![
            vec![1, 1, 0, 0],
            vec![1, 1, 0, 0],
            vec![1, 1, 1, 0],
            vec![1, 1, 1, 1]
        ]
    );
    // Row 1: no prefix — the causal triangle.
    assert_eq!(
        seen[1],
        vec![
            vec![1, 0, 0, 0],
            vec![1, 1, 0, 0],
            vec![1, 1, 1, 0],
            vec![1, 1, 1, 1]
        ]
    );
    let hidden: Vec<f32> = bias.flatten_all().unwrap().to_vec1().unwrap();
    assert!(hidden.iter().all(|&b| b == 0.0 || b == f32::MIN));
}

#[test]
fn a_prefix_position_reads_later_prefix_tokens_but_never_the_continuation() {
    let (m, _) = Gpt::init(&GptConfig::tiny(24), 7, &Device::Cpu).unwrap();
    let ids = [3u32, 9, 4, 17, 11, 5];
    let base = logits_at(&m, &ids, 3, 0);
    // Token 2 is in the prefix (3 tokens): position 0 reads it.
    let mut in_prefix = ids;
    in_prefix[2] = 20;
    assert!(max_diff(&base, &logits_at(&m, &in_prefix, 3, 0)) > 1e-4);
    // Tokens 3.. are the continuation: positions in the prefix do not read them.
    let mut after = ids;
    after[3] = 20;
    after[5] = 1;
    assert!(max_diff(&base, &logits_at(&m, &after, 3, 0)) < 1e-6);
    assert!(max_diff(&logits_at(&m, &ids, 3, 2), &logits_at(&m, &after, 3, 2)) < 1e-6);
    // A continuation position reads the whole prefix and what precedes it, not what follows.
    let p4 = logits_at(&m, &ids, 3, 4);
    assert!(max_diff(&p4, &logits_at(&m, &after, 3, 4)) > 1e-4);
    let mut last = ids;
    last[5] = 2;
    assert!(max_diff(&p4, &logits_at(&m, &last, 3, 4)) < 1e-6);
}

#[test]
fn a_one_token_prefix_is_the_causal_lm() {
    let (m, _) = Gpt::init(&GptConfig::tiny(24), 8, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 9, 4, 17, 11], [1, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    let causal: Vec<f32> = m
        .forward(&ids, &StepContext::EVAL)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let p = Tensor::new(&[1u32, 1], &Device::Cpu).unwrap();
    let prefix: Vec<f32> = m
        .forward_prefix_lm(&ids, &p, &StepContext::EVAL)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(max_diff(&causal, &prefix) < 1e-5);
}
