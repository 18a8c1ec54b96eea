"""The paper behind each method, cited on its adapter's model card.

:data:`METHOD_PAPERS` is kept here, apart from the rest of the card, until each method's registration carries
its own reference (``MethodSpec.paper`` / ``MethodSpec.citation``): then :func:`method_paper` reads
``METHODS[name]`` and the table goes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodPaper:
    """Where a method comes from: a one-line reference (``paper``) and its BibTeX (``citation``)."""

    paper: str
    citation: str


METHOD_PAPERS: dict[str, MethodPaper] = {
    "baseline": MethodPaper(
        paper="The frozen-backbone baseline (pooler and head trained) of the missing-modality papers, as in Lee et "
              "al., Multimodal Prompting with Missing Modalities for Visual Recognition, CVPR 2023.",
        citation="@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
                 "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
                 "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}",
    ),
    "map": MethodPaper(
        paper="Lee, Tsai, Chiu and Lee. Multimodal Prompting with Missing Modalities for Visual Recognition. "
              "CVPR 2023. https://github.com/YiLunLee/missing_aware_prompts",
        citation="@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
                 "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
                 "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}",
    ),
    "rep": MethodPaper(
        paper="Zhu, Liu, Ba, Xue and Zhang. Buffer Replay Enhances the Robustness of Multimodal Learning under "
              "Missing-Modality (REP: REplay Prompting).",
        citation="@misc{zhu2025rep,\n  title={Buffer Replay Enhances the Robustness of Multimodal Learning under "
                 "Missing-Modality},\n  author={Zhu, Hongye and Liu, Xuan and Ba, Yanwen and Xue, Jingye and Zhang, "
                 "Shigeng}\n}",
    ),
    "memprompt": MethodPaper(
        paper="Zhao, Xi, Fu and Zhao. Enhancing Multimodal Model Robustness Under Missing Modalities via "
              "Memory-Driven Prompt Learning. IJCAI 2025. https://github.com/zhao-yh20/MemPrompt",
        citation="@inproceedings{zhao2025memprompt,\n  title={Enhancing Multimodal Model Robustness Under Missing "
                 "Modalities via Memory-Driven Prompt Learning},\n  author={Zhao, Yihan and Xi, Wei and Fu, Xiao and "
                 "Zhao, Jizhong},\n  booktitle={IJCAI},\n  year={2025}\n}",
    ),
    "cmpt": MethodPaper(
        paper="Reza, Patil, Solh and Asif. Robust Multimodal Learning via Cross-Modal Proxy Tokens. TMLR, "
              "arXiv:2501.17823.",
        citation="@article{reza2025cmpt,\n  title={Robust Multimodal Learning via Cross-Modal Proxy Tokens},\n"
                 "  author={Reza, Md Kaykobad and Patil, Ameya and Solh, Mashhour and Asif, M. Salman},\n"
                 "  journal={Transactions on Machine Learning Research},\n  eprint={2501.17823},\n"
                 "  archivePrefix={arXiv},\n  year={2025}\n}",
    ),
    "redeem": MethodPaper(
        paper="Lang, Hong, Cheng, Zhong, Wang and Zhou. REDEEMing Modality Information Loss: Retrieval-Guided "
              "Conditional Generation for Severely Modality Missing Learning. KDD 2025. "
              "https://doi.org/10.1145/3711896.3737101",
        citation="@inproceedings{lang2025redeem,\n  title={REDEEMing Modality Information Loss: Retrieval-Guided "
                 "Conditional Generation for Severely Modality Missing Learning},\n  author={Lang, Jian and Hong, "
                 "Rongpei and Cheng, Zhangtao and Zhong, Ting and Wang, Yong and Zhou, Fan},\n  booktitle={KDD},\n"
                 "  doi={10.1145/3711896.3737101},\n  year={2025}\n}",
    ),
    "ragpt": MethodPaper(
        paper="Lang, Cheng, Zhong and Zhou. Retrieval-Augmented Dynamic Prompt Tuning for Incomplete Multimodal "
              "Learning. AAAI 2025. https://github.com/Jian-Lang/RAGPT",
        citation="@inproceedings{lang2025ragpt,\n  title={Retrieval-Augmented Dynamic Prompt Tuning for Incomplete "
                 "Multimodal Learning},\n  author={Lang, Jian and Cheng, Zhangtao and Zhong, Ting and Zhou, Fan},\n"
                 "  booktitle={AAAI},\n  year={2025}\n}",
    ),
}


def method_paper(name: str) -> MethodPaper:
    """The paper of method ``name``; a placeholder for methods registered without one in :data:`METHOD_PAPERS`."""
    return METHOD_PAPERS.get(name, MethodPaper(paper=f"No paper recorded for {name!r}.", citation=""))
