"""Presets for every experiment of the paper: one function per official config file.

Each preset is named after its file in the official ``score_sde_pytorch/configs/`` folder
(``ve/cifar10_ncsnpp_continuous.py`` -> ``ve_cifar10_ncsnpp_continuous``) and carries its
hyperparameters: data, SDE, network, optimiser, warmup, gradient clipping, EMA rate, batch size,
iterations, sampler and signal-to-noise ratio. Image datasets are read from ``data.root``
(``--set data.root=PATH``). Where the official file has a bug, the preset does what was meant
and says so.
"""

from scoresde.setup.presets import paper_cifar10, paper_highres, paper_smld

PAPER_PRESETS = {
    fn.__name__: fn
    for fn in (
        paper_cifar10.ve_cifar10_ncsnpp_continuous,
        paper_cifar10.ve_cifar10_ncsnpp_deep_continuous,
        paper_cifar10.ve_cifar10_ncsnpp,
        paper_cifar10.ve_cifar10_ddpm,
        paper_cifar10.vp_cifar10_ddpmpp_continuous,
        paper_cifar10.vp_cifar10_ddpmpp_deep_continuous,
        paper_cifar10.vp_cifar10_ddpmpp,
        paper_cifar10.vp_cifar10_ncsnpp_continuous,
        paper_cifar10.vp_cifar10_ncsnpp_deep_continuous,
        paper_cifar10.vp_cifar10_ncsnpp,
        paper_cifar10.subvp_cifar10_ddpmpp_continuous,
        paper_cifar10.subvp_cifar10_ddpmpp_deep_continuous,
        paper_cifar10.subvp_cifar10_ncsnpp_continuous,
        paper_cifar10.subvp_cifar10_ncsnpp_deep_continuous,
        paper_cifar10.subvp_cifar10_ddpm_continuous,
        paper_cifar10.vp_ddpm_cifar10,
        paper_cifar10.vp_ddpm_cifar10_continuous,
        paper_cifar10.vp_ddpm_cifar10_unconditional,
        paper_highres.ve_bedroom_ncsnpp_continuous,
        paper_highres.ve_church_ncsnpp_continuous,
        paper_highres.ve_celebahq_256_ncsnpp_continuous,
        paper_highres.ve_ffhq_256_ncsnpp_continuous,
        paper_highres.ve_celebahq_ncsnpp_continuous,
        paper_highres.ve_ffhq_ncsnpp_continuous,
        paper_highres.ve_celeba_ncsnpp,
        paper_highres.vp_ddpm_bedroom,
        paper_highres.vp_ddpm_church,
        paper_highres.vp_ddpm_celebahq,
        paper_smld.ve_ncsn_cifar10,
        paper_smld.ve_ncsn_cifar10_5,
        paper_smld.ve_ncsn_cifar10_124,
        paper_smld.ve_ncsn_cifar10_1245,
        paper_smld.ve_ncsn_celeba,
        paper_smld.ve_ncsn_celeba_5,
        paper_smld.ve_ncsn_celeba_124,
        paper_smld.ve_ncsn_celeba_1245,
        paper_smld.ve_ncsnv2_cifar10,
        paper_smld.ve_ncsnv2_celeba,
        paper_smld.ve_ncsnv2_bedroom,
    )
}
