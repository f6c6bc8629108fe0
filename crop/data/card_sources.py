"""Per-source facts for the dataset card: display names, where each source's terms live, what
is known of its license, and the BibTeX of every work the card cites.

Kept apart from :mod:`crop.data.card` (which renders the card) because it is data that grows with
every source the pipeline learns, and is reviewed for accuracy rather than for code. Only facts we
are sure of are stated; everything else says "see the source's terms".
"""

from __future__ import annotations

# source tag -> (display name, where to read its terms, license facts, citation keys).
# Only facts we are sure of are stated; everything else says "see the source's terms".
SOURCES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "textvqa": ("TextVQA", "https://textvqa.org",
                "annotations CC BY 4.0; images from Open Images, each under its own license",
                ("singh2019textvqa",)),
    "textcap": ("TextCaps", "https://arxiv.org/abs/2003.12462",
                "see the source's terms; images are the TextVQA (Open Images) images", ("sidorov2020textcaps",)),
    "flickr30k": ("Flickr30k (Entities boxes)", "https://arxiv.org/abs/1505.04870",
                  "see the source's terms; images are Flickr photos",
                  ("young2014flickr30k", "plummer2015flickr30kentities")),
    "docvqa": ("DocVQA", "https://arxiv.org/abs/2007.00398", "see the source's terms", ("mathew2021docvqa",)),
    "infographicsvqa": ("InfographicVQA", "https://arxiv.org/abs/2104.12756", "see the source's terms",
                        ("mathew2022infographicvqa",)),
    "dude": ("DUDE", "https://arxiv.org/abs/2305.08455", "see the source's terms", ("vanlandeghem2023dude",)),
    "sroie": ("SROIE", "https://arxiv.org/abs/2103.10213", "see the source's terms", ("huang2019sroie",)),
    "gqa": ("GQA", "https://arxiv.org/abs/1902.09506",
            "questions: see the source's terms; images from Visual Genome (CC BY 4.0)", ("hudson2019gqa",)),
    "vsr": ("VSR", "https://arxiv.org/abs/2205.00363", "see the source's terms; images from COCO",
            ("liu2023vsr", "lin2014coco")),
    "openimages": ("Open Images", "https://storage.googleapis.com/openimages/web/index.html",
                   "annotations CC BY 4.0; images listed as CC BY 2.0 (licenses not verified by the "
                   "publisher)", ("kuznetsova2020openimages",)),
    "cub": ("CUB-200-2011", "https://www.vision.caltech.edu/datasets/cub_200_2011/",
            "see the source's terms", ("wah2011cub",)),
    "v7w": ("Visual7W", "https://arxiv.org/abs/1511.03416", "see the source's terms; images from COCO",
            ("zhu2016visual7w", "lin2014coco")),
    "llava": ("LLaVA-1.5 instruction mix (llava_v1_5_mix665k)", "https://llava-vl.github.io",
              "CC BY 4.0 as declared on the LLaVA-Instruct-150K card, which also asks users to abide by "
              "OpenAI's terms of use; images from COCO, GQA, OCR-VQA, TextVQA and Visual Genome under "
              "their own terms", ("liu2023llava", "liu2024llava15", "lin2014coco")),
}

_BIB = {
    "guo2025crop": ("inproceedings", "{CROP}: Contextual Region-Oriented Visual Token Pruning",
                    "Guo, Jiawei and Zhai, Feifei and Jian, Pu and Wei, Qianrun and Zhou, Yu",
                    "booktitle = {Proceedings of the 2025 Conference on Empirical Methods in Natural Language "
                    "Processing}, pages = {9767--9783}", 2025),
    "shao2024visualcot": ("article", "Visual {CoT}: Advancing Multi-Modal Language Models with a Comprehensive "
                          "Dataset and Benchmark for Chain-of-Thought Reasoning",
                          "Shao, Hao and Qian, Shengju and Xiao, Han and Song, Guanglu and Zong, Zhuofan and "
                          "Wang, Letian and Liu, Yu and Li, Hongsheng",
                          "journal = {arXiv preprint arXiv:2403.16999}", 2024),
    "liu2023llava": ("inproceedings", "Visual Instruction Tuning",
                     "Liu, Haotian and Li, Chunyuan and Wu, Qingyang and Lee, Yong Jae",
                     "booktitle = {Advances in Neural Information Processing Systems}", 2023),
    "liu2024llava15": ("inproceedings", "Improved Baselines with Visual Instruction Tuning",
                       "Liu, Haotian and Li, Chunyuan and Li, Yuheng and Lee, Yong Jae",
                       "booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}", 2024),
    "singh2019textvqa": ("inproceedings", "Towards {VQA} Models That Can Read",
                         "Singh, Amanpreet and Natarajan, Vivek and Shah, Meet and Jiang, Yu and Chen, Xinlei and "
                         "Batra, Dhruv and Parikh, Devi and Rohrbach, Marcus",
                         "booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}", 2019),
    "sidorov2020textcaps": ("inproceedings", "{TextCaps}: a Dataset for Image Captioning with Reading "
                            "Comprehension", "Sidorov, Oleksii and Hu, Ronghang and Rohrbach, Marcus and "
                            "Singh, Amanpreet", "booktitle = {European Conference on Computer Vision (ECCV)}", 2020),
    "young2014flickr30k": ("article", "From image descriptions to visual denotations: New similarity metrics "
                           "for semantic inference over event descriptions",
                           "Young, Peter and Lai, Alice and Hodosh, Micah and Hockenmaier, Julia",
                           "journal = {Transactions of the Association for Computational Linguistics}, "
                           "volume = {2}, pages = {67--78}", 2014),
    "plummer2015flickr30kentities": ("inproceedings", "{Flickr30k Entities}: Collecting Region-to-Phrase "
                                     "Correspondences for Richer Image-to-Sentence Models",
                                     "Plummer, Bryan A. and Wang, Liwei and Cervantes, Chris M. and Caicedo, "
                                     "Juan C. and Hockenmaier, Julia and Lazebnik, Svetlana",
                                     "booktitle = {IEEE International Conference on Computer Vision (ICCV)}", 2015),
    "mathew2021docvqa": ("inproceedings", "{DocVQA}: A Dataset for {VQA} on Document Images",
                         "Mathew, Minesh and Karatzas, Dimosthenis and Jawahar, C. V.",
                         "booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)}", 2021),
    "mathew2022infographicvqa": ("inproceedings", "{InfographicVQA}",
                                 "Mathew, Minesh and Bagal, Viraj and Tito, Rub{\\`e}n and Karatzas, Dimosthenis "
                                 "and Valveny, Ernest and Jawahar, C. V.",
                                 "booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision "
                                 "(WACV)}", 2022),
    "vanlandeghem2023dude": ("inproceedings", "Document Understanding Dataset and Evaluation ({DUDE})",
                             "Van Landeghem, Jordy and Tito, Rub{\\`e}n and Borchmann, {\\L}ukasz and others",
                             "booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)}", 2023),
    "huang2019sroie": ("inproceedings", "{ICDAR2019} Competition on Scanned Receipt {OCR} and Information "
                       "Extraction", "Huang, Zheng and Chen, Kai and He, Jianhua and Bai, Xiang and Karatzas, "
                       "Dimosthenis and Lu, Shijian and Jawahar, C. V.",
                       "booktitle = {International Conference on Document Analysis and Recognition (ICDAR)}", 2019),
    "hudson2019gqa": ("inproceedings", "{GQA}: A New Dataset for Real-World Visual Reasoning and Compositional "
                      "Question Answering", "Hudson, Drew A. and Manning, Christopher D.",
                      "booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}", 2019),
    "liu2023vsr": ("article", "Visual Spatial Reasoning", "Liu, Fangyu and Emerson, Guy and Collier, Nigel",
                   "journal = {Transactions of the Association for Computational Linguistics}, volume = {11}", 2023),
    "kuznetsova2020openimages": ("article", "The {Open Images} Dataset {V4}: Unified image classification, "
                                 "object detection, and visual relationship detection at scale",
                                 "Kuznetsova, Alina and Rom, Hassan and Alldrin, Neil and Uijlings, Jasper and "
                                 "Krasin, Ivan and Pont-Tuset, Jordi and Kamali, Shahab and Popov, Stefan and "
                                 "Malloci, Matteo and Kolesnikov, Alexander and Duerig, Tom and Ferrari, Vittorio",
                                 "journal = {International Journal of Computer Vision}", 2020),
    "wah2011cub": ("techreport", "The {Caltech-UCSD} Birds-200-2011 Dataset",
                   "Wah, Catherine and Branson, Steve and Welinder, Peter and Perona, Pietro and Belongie, Serge",
                   "institution = {California Institute of Technology}, number = {CNS-TR-2011-001}", 2011),
    "zhu2016visual7w": ("inproceedings", "{Visual7W}: Grounded Question Answering in Images",
                        "Zhu, Yuke and Groth, Oliver and Bernstein, Michael and Fei-Fei, Li",
                        "booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}", 2016),
    "lin2014coco": ("inproceedings", "Microsoft {COCO}: Common Objects in Context",
                    "Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and "
                    "Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence",
                    "booktitle = {European Conference on Computer Vision (ECCV)}", 2014),
}


def bibtex(key: str) -> str:
    """The BibTeX entry of citation ``key`` (a key of ``_BIB``)."""
    kind, title, authors, extra, year = _BIB[key]
    return (f"@{kind}{{{key},\n  title = {{{title}}},\n  author = {{{authors}}},\n"
            f"  {extra.replace('}, ', '},' + chr(10) + '  ')},\n  year = {{{year}}}\n}}")
