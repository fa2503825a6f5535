//! Quantities (`500m`, `16Gi`) and the amounts of resources that pods ask
//! for and nodes offer, for the scheduler and the node shapes.

use serde_json::Value;

/// The pods a node takes when its status does not say, as the kubelet's
/// default `maxPods`.
pub(crate) const DEFAULT_MAX_PODS: u64 = 110;

/// CPU in millicores from a quantity (`500m`, `2`, `0.5`).
pub(crate) fn cpu_millis(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => q.parse::<f64>().map(|c| (c * 1000.0) as u64).unwrap_or(0),
    }
}

/// Bytes from a quantity (`512Mi`, `2Gi`, `1G`, `1000`).
pub(crate) fn bytes(q: &str) -> u64 {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (unit, factor) in UNITS {
        if let Some(n) = q.strip_suffix(unit) {
            return n
                .parse::<f64>()
                .map(|n| (n * factor as f64) as u64)
                .unwrap_or(0);
        }
    }
    q.parse().unwrap_or(0)
}

/// CPU as a quantity: whole cores as `4`, anything else as `1500m`.
pub(crate) fn cpu_quantity(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Memory as a quantity in the largest binary unit that divides it
/// (`16Gi`, `512Mi`), or in bytes.
pub(crate) fn memory_quantity(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// How much of each resource: what a pod asks for, what a node offers, or
/// what a node's pods use. Resources other than cpu and memory (GPUs,
/// say) are whole counts, kept by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Amounts {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Pods, counted against the node's `pods` allocatable.
    pub pods: u64,
    /// `(resource name, count)`, sorted by name.
    pub extended: Vec<(String, u64)>,
}

impl Amounts {
    /// What a pod asks for: its containers' requests summed (a limit
    /// stands in for a missing request, as Kubernetes defaults it), and
    /// one pod. Ephemeral storage and huge pages are not counted.
    pub fn requested_by(pod: &Value) -> Amounts {
        let mut total = Amounts {
            pods: 1,
            ..Amounts::default()
        };
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let resources = &container["resources"];
            let requests = resources["requests"].as_object();
            for (name, quantity) in requests.into_iter().flatten() {
                total.add_quantity(name, quantity.as_str().unwrap_or("0"));
            }
            let limits = resources["limits"].as_object();
            for (name, quantity) in limits.into_iter().flatten() {
                if !requests.is_some_and(|r| r.contains_key(name)) {
                    total.add_quantity(name, quantity.as_str().unwrap_or("0"));
                }
            }
        }
        total
    }

    /// What a node offers to pods: its `status.allocatable`.
    pub fn allocatable(node: &Value) -> Amounts {
        let mut total = Amounts::default();
        let allocatable = node["status"]["allocatable"].as_object();
        for (name, quantity) in allocatable.into_iter().flatten() {
            total.add_quantity(name, quantity.as_str().unwrap_or("0"));
        }
        if !allocatable.is_some_and(|a| a.contains_key("pods")) {
            total.pods = DEFAULT_MAX_PODS;
        }
        total
    }

    fn add_quantity(&mut self, name: &str, quantity: &str) {
        match name {
            "cpu" => self.cpu_millis += cpu_millis(quantity),
            "memory" => self.memory_bytes += bytes(quantity),
            "pods" => self.pods += quantity.parse::<u64>().unwrap_or(0),
            "ephemeral-storage" => {}
            _ if name.starts_with("hugepages-") => {}
            _ => self.add_extended(name, quantity.parse().unwrap_or(0)),
        }
    }

    fn add_extended(&mut self, name: &str, count: u64) {
        match self
            .extended
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
        {
            Ok(i) => self.extended[i].1 += count,
            Err(i) => self.extended.insert(i, (name.to_owned(), count)),
        }
    }

    /// How much of `name` (an extended resource) there is.
    fn extended(&self, name: &str) -> u64 {
        self.extended
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, count)| *count)
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Amounts) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pods += other.pods;
        for (name, count) in &other.extended {
            self.add_extended(name, *count);
        }
    }

    /// Takes `other` away from these amounts (none goes below zero).
    pub fn take(&mut self, other: &Amounts) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, count) in &other.extended {
            if let Some((_, have)) = self.extended.iter_mut().find(|(n, _)| n == name) {
                *have = have.saturating_sub(*count);
            }
        }
    }

    /// Why `wanted` does not fit in these amounts (a node's allocatable)
    /// once `used` is taken, in the scheduler's words; `None` when it fits.
    pub fn shortfall(&self, used: &Amounts, wanted: &Amounts) -> Option<String> {
        let lacks = |offered: u64, taken: u64, asked: u64| asked > offered.saturating_sub(taken);
        if lacks(self.pods, used.pods, wanted.pods) {
            return Some("Too many pods".to_owned());
        }
        if lacks(self.cpu_millis, used.cpu_millis, wanted.cpu_millis) {
            return Some("Insufficient cpu".to_owned());
        }
        if lacks(self.memory_bytes, used.memory_bytes, wanted.memory_bytes) {
            return Some("Insufficient memory".to_owned());
        }
        wanted
            .extended
            .iter()
            .find(|(name, asked)| lacks(self.extended(name), used.extended(name), *asked))
            .map(|(name, _)| format!("Insufficient {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_and_print() {
        assert_eq!(cpu_millis("500m"), 500);
        assert_eq!(cpu_millis("2"), 2000);
        assert_eq!(cpu_millis("0.25"), 250);
        assert_eq!(bytes("512Mi"), 512 << 20);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1000"), 1000);
        assert_eq!(cpu_quantity(4000), "4");
        assert_eq!(cpu_quantity(1500), "1500m");
        assert_eq!(memory_quantity(16 << 30), "16Gi");
        assert_eq!(memory_quantity(1536 << 20), "1536Mi");
        assert_eq!(memory_quantity(1000), "1000");
    }

    #[test]
    fn a_pod_asks_for_its_requests_or_else_its_limits() {
        let pod = json!({ "spec": { "containers": [
            { "resources": {
                "requests": { "cpu": "500m", "memory": "1Gi" },
                "limits": { "cpu": "2", "nvidia.com/gpu": "1" } } },
            { "resources": { "limits": { "memory": "512Mi" } } },
        ] } });
        let asked = Amounts::requested_by(&pod);
        assert_eq!(asked.cpu_millis, 500);
        assert_eq!(asked.memory_bytes, (1 << 30) + (512 << 20));
        assert_eq!(asked.pods, 1);
        assert_eq!(asked.extended, vec![("nvidia.com/gpu".to_owned(), 1)]);
    }

    #[test]
    fn a_shortfall_names_what_is_missing() {
        let node = json!({ "status": { "allocatable": {
            "cpu": "4", "memory": "8Gi", "pods": "2", "nvidia.com/gpu": "1" } } });
        let offered = Amounts::allocatable(&node);
        let gpu_pod = json!({ "spec": { "containers": [
            { "resources": { "requests": { "cpu": "1", "nvidia.com/gpu": "1" } } }] } });
        let wanted = Amounts::requested_by(&gpu_pod);
        assert_eq!(offered.shortfall(&Amounts::default(), &wanted), None);
        assert_eq!(
            offered.shortfall(&wanted, &wanted).as_deref(),
            Some("Insufficient nvidia.com/gpu")
        );
        let mut two = wanted.clone();
        two.add(&wanted);
        assert_eq!(
            offered.shortfall(&two, &wanted).as_deref(),
            Some("Too many pods")
        );
    }
}
