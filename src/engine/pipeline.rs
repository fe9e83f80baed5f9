use super::error::EngineError;
use super::stage::Stage;
use std::collections::{BTreeMap, BTreeSet};

/// A validated set of stages: unique names, every input names an existing stage output, no cycles.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    order: Vec<usize>,
}

impl Pipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Result<Self, EngineError> {
        let mut index = BTreeMap::new();
        for (i, s) in stages.iter().enumerate() {
            if index.insert(s.name().to_string(), i).is_some() {
                return Err(EngineError::DuplicateStage(s.name().into()));
            }
        }
        for s in &stages {
            for input in s.inputs() {
                let bad = |why: String| EngineError::BadInput {
                    stage: s.name().into(),
                    input: input.name.clone(),
                    from: format!("{}.{}", input.stage, input.output),
                    why,
                };
                let Some(&j) = index.get(&input.stage) else {
                    return Err(bad("is not a stage".into()));
                };
                if !stages[j].outputs().contains(&input.output) {
                    return Err(bad(format!("is not an output of `{}` (outputs: {})", input.stage, stages[j].outputs().join(", "))));
                }
            }
        }
        let order = topological(&stages, &index)?;
        Ok(Self { stages, order })
    }

    /// Stages in an order where every stage comes after its inputs' stages.
    pub fn ordered(&self) -> impl Iterator<Item = &dyn Stage> {
        self.order.iter().map(|&i| self.stages[i].as_ref())
    }

    pub fn get(&self, name: &str) -> Result<&dyn Stage, EngineError> {
        self.stages.iter().find(|s| s.name() == name).map(|s| s.as_ref()).ok_or_else(|| {
            EngineError::UnknownStage(name.into(), self.stages.iter().map(|s| s.name().to_string()).collect::<Vec<_>>().join(", "))
        })
    }

    /// The stages `name` depends on (directly), deduplicated.
    pub fn parents(&self, name: &str) -> Result<BTreeSet<String>, EngineError> {
        Ok(self.get(name)?.inputs().into_iter().map(|i| i.stage).collect())
    }

    /// `name` and everything upstream of it.
    pub fn ancestors_and_self(&self, name: &str) -> Result<BTreeSet<String>, EngineError> {
        let mut out = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            if out.insert(n.clone()) {
                todo.extend(self.parents(&n)?);
            }
        }
        Ok(out)
    }

    /// `name` and everything downstream of it.
    pub fn descendants_and_self(&self, name: &str) -> Result<BTreeSet<String>, EngineError> {
        self.get(name)?;
        let mut out = BTreeSet::from([name.to_string()]);
        for s in self.ordered() {
            if s.inputs().iter().any(|i| out.contains(&i.stage)) {
                out.insert(s.name().to_string());
            }
        }
        Ok(out)
    }

    /// Edges `from → to` (with the output name), in pipeline order.
    pub fn edges(&self) -> Vec<(String, String, String)> {
        let mut e = Vec::new();
        for s in self.ordered() {
            for i in s.inputs() {
                e.push((i.stage.clone(), s.name().to_string(), i.output.clone()));
            }
        }
        e
    }
}

fn topological(stages: &[Box<dyn Stage>], index: &BTreeMap<String, usize>) -> Result<Vec<usize>, EngineError> {
    // Depth-first with colours; a grey node met again closes a cycle, which we name.
    fn visit(
        i: usize,
        stages: &[Box<dyn Stage>],
        index: &BTreeMap<String, usize>,
        colour: &mut [u8],
        path: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<(), EngineError> {
        match colour[i] {
            2 => return Ok(()),
            1 => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut names: Vec<&str> = path[start..].iter().map(|&p| stages[p].name()).collect();
                names.push(stages[i].name());
                return Err(EngineError::Cycle(names.join(" → ")));
            }
            _ => {}
        }
        colour[i] = 1;
        path.push(i);
        let mut parents: Vec<usize> = stages[i].inputs().iter().map(|inp| index[&inp.stage]).collect();
        parents.sort();
        parents.dedup();
        for p in parents {
            visit(p, stages, index, colour, path, out)?;
        }
        path.pop();
        colour[i] = 2;
        out.push(i);
        Ok(())
    }
    let mut colour = vec![0u8; stages.len()];
    let mut out = Vec::with_capacity(stages.len());
    for i in 0..stages.len() {
        visit(i, stages, index, &mut colour, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}
