//! The built-in families, one file each: its [`FamilySpec`](crate::family::FamilySpec) and
//! its model as a [`LanguageModel`](crate::model::LanguageModel). A family is added by one such
//! file and one line in [`crate::registry`]'s list (or `registry::register` from outside).

pub mod bart;
pub mod bert;
pub mod gpt;
pub mod t5;

use std::path::Path;

use candle_core::Device;
use lm_models::ParamStore;

/// Every parameter name of a store (a model trained from scratch: all of them are new).
fn all_names(s: &ParamStore) -> Vec<String> {
    s.vars().into_iter().map(|(n, _)| n).collect()
}

/// How a model is made: from its config and a seed, or from a HuggingFace directory.
type Init<C, M> = fn(&C, u64, &Device) -> lm_models::Result<(M, ParamStore)>;
type FromHf<M> = fn(&Path, &Device) -> lm_models::Result<(M, ParamStore)>;

/// The model in `dir` (HuggingFace `model_type`), or with `scratch` a fresh one of its config
/// (then every parameter is new): what GPT, BART and T5 fine-tune from.
fn load_pretrained<C: serde::de::DeserializeOwned, M>(
    dir: &Path,
    model_type: &str,
    (scratch, seed, device): (bool, u64, &Device),
    init: Init<C, M>,
    from_hf: FromHf<M>,
) -> crate::error::Result<(M, ParamStore, Vec<String>)> {
    if scratch {
        let (m, s) = init(
            &lm_models::hf::read_config(dir, &[model_type])?,
            seed,
            device,
        )?;
        let fresh = all_names(&s);
        return Ok((m, s, fresh));
    }
    let (m, s) = from_hf(dir, device)?;
    Ok((m, s, vec![]))
}

/// An encoder-decoder checkpoint fine-tunes on input/target pairs: refuses a classification
/// task's labels.
fn refuse_labels(
    dir: &std::path::Path,
    model_type: &str,
    labels: Option<&[String]>,
) -> crate::error::Result<()> {
    if labels.is_some() {
        return Err(crate::error::TrainError::Checkpoint {
            path: dir.into(),
            problem: format!(
                "a {model_type} model fine-tunes on input/target pairs, and this task's examples are labelled (classification); use a BERT checkpoint, a GPT (it generates the label), or give the examples as {{\"input\", \"target\"}}"
            ),
        });
    }
    Ok(())
}
