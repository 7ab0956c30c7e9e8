//! The built-in families, one file each: its [`FamilySpec`](crate::family::FamilySpec) and
//! its model as a [`LanguageModel`](crate::model::LanguageModel). A family is added by one such
//! file and one line in [`crate::registry`]'s list (or `registry::register` from outside).

pub mod bart;
pub mod bert;
pub mod gpt;
pub mod t5;

/// Every parameter name of a store (a model trained from scratch: all of them are new).
fn all_names(s: &lm_models::ParamStore) -> Vec<String> {
    s.vars().into_iter().map(|(n, _)| n).collect()
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
