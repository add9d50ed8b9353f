import warnings

warnings.filterwarnings("ignore", message=".*[Ee]ventlet.*")
