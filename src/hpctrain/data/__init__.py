"""Datasets as HDF5 files and the tf.data pipelines that read them.

schema      the file format (version 1): its definition, constants and shared helpers
dataset     open_dataset: reads a file and validates it against the schema
packing     create (the Writer), splits, sources and label helpers: what the packers use
verify      verify: re-reads a file and checks every stored hash
describe    describe, summary: what a file holds, for people
isbi, mnist, images, synthetic
            packers: `hpctrain pack isbi|mnist|images|synthetic-em`
pipeline    train_dataset, eval_dataset, dataset_info, training_counts, validation_plan: per-rank,
            shuffled, augmented, resumable batches and the checks and step counts of a training run
augment     AugmentSpec (the job spec's [data.augment]) and the in-graph augmentation
staging     stage_to_node: one copy per node on local storage
"""
