"""A real multi-node Kubernetes on one machine (``pgquorum kube``): built from source into the cache,
control plane on the host, every worker node in its own network namespace with its own containerd
and kubelet. Also the kind provider for machines with Docker."""
