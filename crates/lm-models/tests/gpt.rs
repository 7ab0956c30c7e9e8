//! GPT: a few steps of training lower the loss; parameter names and initialization. (Its
//! finite-difference gradient check is with the other families', in `families.rs`.)

use candle_core::{Device, Tensor};
use lm_models::gpt::{Gpt, GptConfig};
use lm_models::{DropoutKey, MatmulPrecision, StepContext};
use lm_objectives::loss::{cross_entropy, CrossEntropy};
use lm_optim::{Adam, AdamConfig, Optimizer, ParamGroup};

/// What these tests run under: f32 products, dropout on (the tiny configs have rate 0, so it is
/// the identity) with key 0.
const TRAIN: StepContext = StepContext {
    precision: MatmulPrecision::Highest,
    dropout: Some(DropoutKey {
        key: 0,
        first_row: 0,
    }),
    recompute: lm_models::Recompute::Nothing,
};

fn batch(device: &Device) -> (Tensor, Tensor) {
    let x = Tensor::new(&[[1u32, 5, 2, 7, 3, 3], [0, 4, 4, 6, 1, 2]], device).unwrap();
    let y = Tensor::new(&[[5i64, 2, 7, 3, 3, 1], [4, 4, 6, 1, 2, -100]], device).unwrap();
    (x, y)
}

fn loss(model: &Gpt, x: &Tensor, y: &Tensor) -> Tensor {
    cross_entropy(
        &model.forward(x, &TRAIN).unwrap(),
        y,
        &CrossEntropy::default(),
    )
    .unwrap()
}

#[test]
fn a_few_dozen_adamw_steps_lower_the_loss() {
    let device = Device::Cpu;
    let cfg = GptConfig::tiny(8);
    let (model, store) = Gpt::init(&cfg, 0, &device).unwrap();
    let (decay, no_decay) = Gpt::decay_groups(&store);
    let mut opt = Adam::new(
        vec![
            ParamGroup::new("decay", decay, 0.1),
            ParamGroup::new("no_decay", no_decay, 0.0),
        ],
        AdamConfig::adamw(),
    )
    .unwrap();
    let (x, y) = batch(&device);
    let first = loss(&model, &x, &y).to_scalar::<f32>().unwrap();
    // An untrained model is close to the uniform guess, ln V.
    assert!((first - (8f32).ln()).abs() < 0.1, "{first}");
    for _ in 0..40 {
        let grads = loss(&model, &x, &y).backward().unwrap();
        opt.step(&grads, 1e-2).unwrap();
    }
    let last = loss(&model, &x, &y).to_scalar::<f32>().unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn parameter_names_follow_gpt2_lm_head_model() {
    let cfg = GptConfig::tiny(8);
    let (_, store) = Gpt::init(&cfg, 0, &Device::Cpu).unwrap();
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"transformer.h.1.attn.c_attn.weight".to_string()));
    assert_eq!(
        store.get("transformer.h.0.mlp.c_fc.weight").unwrap().dims(),
        &[16, 64]
    );
    assert_eq!(names.len(), 2 + 12 * 2 + 2);
    assert_eq!(store.num_params(), cfg.num_params());
}

#[test]
fn residual_projections_are_scaled_down() {
    let cfg = GptConfig::new(32, 16, 64, 8, 4);
    let (_, store) = Gpt::init(&cfg, 0, &Device::Cpu).unwrap();
    let std = |name: &str| {
        let v = store
            .get(name)
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    // c_fc: 64·256 samples of N(0, 0.02²); c_proj of the MLP: 0.02/√16 = 0.005.
    assert!((std("transformer.h.0.mlp.c_fc.weight") - 0.02).abs() < 0.001);
    assert!((std("transformer.h.0.mlp.c_proj.weight") - 0.005).abs() < 0.0003);
}
