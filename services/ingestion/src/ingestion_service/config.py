from mosaic.platform.config import ServiceSettings


class Settings(ServiceSettings):
    SERVICE = "ingestion"
