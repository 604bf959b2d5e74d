"""ferritin.stats — design matrices, voxelwise GLM, SPM-compatible RFT inference, clinical statistics."""
