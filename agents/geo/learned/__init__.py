"""`tapfinger-geo`: the learned geo scheduler (issue 16). A heterogeneous graph-attention encoder of
`envs.geo_graph`'s graph, a PS pointer and per-site worker heads decoded job by job under the
slot's capacities, cloned from `okita` and fine-tuned with PPO on minus the slot cost.
`docs/geo-learned.md` says what is learned and what is a rule."""
