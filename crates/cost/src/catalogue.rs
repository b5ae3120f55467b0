//! Model prices: the catalogue shipped in `data/catalogue.toml`, and the same entry shape
//! for overrides from the config file.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::normalize;

/// Prices of one model in USD per million tokens. Absent prices fall back as documented in
/// docs/COST.md: cached input and cache writes to input, 1-hour writes to 5-minute writes,
/// reasoning to output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub name: String,
    #[serde(default)]
    pub provider: Option<String>,
    /// `embedding` for models that have no output price.
    #[serde(default)]
    pub kind: Option<String>,
    /// Other names the model answers to (Azure deployments, local names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Overrides only: the price applies to this project alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub input: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    #[serde(default)]
    pub output: Option<f64>,
    #[serde(default)]
    pub reasoning: Option<f64>,
    #[serde(default)]
    pub audio_input: Option<f64>,
    #[serde(default)]
    pub cached_audio_input: Option<f64>,
    #[serde(default)]
    pub audio_output: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
}

/// Prices that replace the base prices once the prompt is longer than `above_input_tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub above_input_tokens: i64,
    #[serde(default)]
    pub input: Option<f64>,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    #[serde(default)]
    pub output: Option<f64>,
}

impl ModelPrice {
    pub fn is_embedding(&self) -> bool {
        self.kind.as_deref() == Some("embedding")
    }

    /// Refuses entries that would price something silently wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err("a model price has an empty name".into());
        }
        if self.output.is_none() && !self.is_embedding() {
            return Err(format!(
                "model {name:?} has no output price (set `output`, or `kind = \"embedding\"`)"
            ));
        }
        let prices = [
            Some(self.input),
            self.cached_input,
            self.cache_write,
            self.cache_write_1h,
            self.output,
            self.reasoning,
            self.audio_input,
            self.cached_audio_input,
            self.audio_output,
        ];
        let tier_prices = self
            .tiers
            .iter()
            .flat_map(|t| [t.input, t.cached_input, t.cache_write, t.output]);
        if prices
            .into_iter()
            .chain(tier_prices)
            .flatten()
            .any(|p| !p.is_finite() || p < 0.0)
        {
            return Err(format!("model {name:?} has a negative or non-finite price"));
        }
        if let Some(kind) = &self.kind
            && kind != "embedding"
            && kind != "chat"
        {
            return Err(format!(
                "model {name:?} has kind {kind:?}: use chat or embedding"
            ));
        }
        Ok(())
    }

    /// The tier that applies to a prompt of `input_tokens` (the highest threshold below it).
    pub fn tier_for(&self, input_tokens: i64) -> Option<&Tier> {
        self.tiers
            .iter()
            .filter(|tier| input_tokens > tier.above_input_tokens)
            .max_by_key(|tier| tier.above_input_tokens)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    version: String,
    date: String,
    models: Vec<ModelPrice>,
}

/// A set of prices indexed by normalized name.
#[derive(Debug, Clone, Default)]
pub struct PriceList {
    pub models: Vec<Arc<ModelPrice>>,
    by_name: HashMap<String, Vec<usize>>,
}

impl PriceList {
    pub fn new(models: Vec<ModelPrice>) -> Result<PriceList, String> {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, model) in models.iter().enumerate() {
            model.validate()?;
            for name in std::iter::once(&model.name).chain(&model.aliases) {
                by_name
                    .entry(normalize::clean(name))
                    .or_default()
                    .push(index);
            }
        }
        Ok(PriceList {
            models: models.into_iter().map(Arc::new).collect(),
            by_name,
        })
    }

    /// Entries named exactly `name` (already normalized).
    pub fn named(&self, name: &str) -> impl Iterator<Item = &Arc<ModelPrice>> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&index| &self.models[index])
    }
}

/// The shipped catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub version: String,
    pub date: String,
    pub prices: PriceList,
}

const SHIPPED: &str = include_str!("../data/catalogue.toml");

impl Catalogue {
    pub fn shipped() -> Result<Catalogue, String> {
        Catalogue::parse(SHIPPED)
    }

    pub fn parse(text: &str) -> Result<Catalogue, String> {
        let file: CatalogueFile =
            toml::from_str(text).map_err(|e| format!("pricing catalogue: {e}"))?;
        Ok(Catalogue {
            version: file.version,
            date: file.date,
            prices: PriceList::new(file.models)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_parses_and_covers_every_named_provider() {
        let catalogue = Catalogue::shipped().unwrap();
        assert!(catalogue.prices.models.len() > 100);
        for provider in [
            "openai",
            "anthropic",
            "google",
            "mistral",
            "deepseek",
            "groq",
            "xai",
            "cohere",
        ] {
            assert!(
                catalogue
                    .prices
                    .models
                    .iter()
                    .any(|m| m.provider.as_deref() == Some(provider)),
                "{provider}"
            );
        }
        let mut names: Vec<_> = catalogue
            .prices
            .models
            .iter()
            .map(|m| (m.provider.clone(), m.name.clone()))
            .collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate (provider, name) entries");
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        let no_output = "version='1'\ndate='d'\n[[models]]\nname='x'\ninput=1.0\n";
        assert!(Catalogue::parse(no_output).unwrap_err().contains("\"x\""));
        let typo = "version='1'\ndate='d'\n[[models]]\nname='x'\ninput=1.0\nouptut=2.0\n";
        assert!(Catalogue::parse(typo).unwrap_err().contains("ouptut"));
        let negative = "version='1'\ndate='d'\n[[models]]\nname='x'\ninput=-1.0\noutput=1.0\n";
        assert!(Catalogue::parse(negative).unwrap_err().contains("negative"));
    }

    #[test]
    fn the_highest_tier_below_the_prompt_length_applies() {
        let catalogue = Catalogue::shipped().unwrap();
        let pro = catalogue.prices.named("gemini-2.5-pro").next().unwrap();
        assert!(pro.tier_for(200_000).is_none());
        assert_eq!(pro.tier_for(200_001).unwrap().input, Some(2.5));
    }
}
