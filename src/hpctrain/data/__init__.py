"""Datasets as HDF5 files and the tf.data pipelines that read them.

schema      the file format (version 1): open_dataset, verify, describe, and the writer the packers use
isbi, mnist, images, synthetic
            packers: `hpctrain pack isbi|mnist|images|synthetic-em`
pipeline    train_dataset, eval_dataset, dataset_info: per-rank, shuffled, augmented, resumable batches
augment     AugmentConfig and the in-graph augmentation
staging     stage_to_node: one copy per node on local storage
"""
